"""Starts tasks, then SIGKILLs itself (SPEC §7, orphans and detached tasks).

A thread task and a pool process task, which die with this process, and two detached process
tasks, which do not: ``far`` finishes on its own, ``forever`` waits to be cancelled by whoever
opens the store next. Prints their ids as one JSON line once every task is RUNNING in the store.

Usage: python process_orphans.py STORE
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import nbtasks


def main() -> None:
    app = nbtasks.App(store=sys.argv[1], workers=2, process_workers=1)

    @app.task
    def in_thread() -> None:
        threading.Event().wait()  # until this process is killed

    @app.task(executor="process")
    def in_pool() -> None:
        threading.Event().wait()  # until its worker dies with this process

    @app.task(executor="process", detach=True)
    def far(n: int, dt: float) -> int:
        ctx = nbtasks.current()
        assert ctx is not None
        for i in range(n):
            time.sleep(dt)
            ctx.progress(i + 1, n, f"step {i + 1}")
        return n * 10

    @app.task(executor="process", detach=True)
    def forever() -> None:
        threading.Event().wait()  # until it is cancelled (terminated)

    results = [in_thread.delay(), in_pool.delay(), far.delay(30, 0.1), forever.delay()]
    other = nbtasks.App(store=sys.argv[1])  # reads the store, as another process would
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(other.store.read_record(r.id)["status"] == "RUNNING" for r in results):
            break
        time.sleep(0.02)
    owners = {r.id: other.store.read_record(r.id)["owner"] for r in results}
    print(json.dumps({"ids": [r.id for r in results], "owners": owners, "pid": os.getpid()}))
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
