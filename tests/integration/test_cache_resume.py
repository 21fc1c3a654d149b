"""Resuming a map (SPEC 6): a ``cache=True`` map whose process was killed mid-way, submitted
again from a new process on the same store, runs only the items that have no SUCCESSFUL result.
The killed run's unfinished records become INTERRUPTED (the orphan sweep) and are not reused.

Both runs are real interpreters running the same script file (so the task's code, and with it
the cache key, is the same); the first is killed (``Popen.kill``: SIGKILL on POSIX) once some
items are SUCCESSFUL in the store, read from this process through a read-only App."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from helpers import wait_until

import nbtasks
from nbtasks import TaskStatus

N = 12

SCRIPT = """
import json, sys, time
import nbtasks

store, runs, phase = sys.argv[1], sys.argv[2], sys.argv[3]

if __name__ == "__main__":
    app = nbtasks.App(store=store, workers=1)

    @app.task(name="resume.work", cache=True)
    def work(x):
        with open(runs, "a") as f:  # one line per call that really ran
            f.write(f"{x}\\n")
        time.sleep(0.15)  # the work: long enough to be killed half-way through the map
        return x * 10

    group = work.map(range(int(sys.argv[4])))
    if phase == "first":
        print("submitted", flush=True)
        group.get(60)  # killed before this returns
    else:
        values = group.get(60)
        out = {"values": values, "ids": [r.id for r in group.results],
               "cached": [r.cached for r in group.results]}
        print(json.dumps(out), flush=True)
        app.shutdown()
"""


def _statuses(store: Path) -> dict[int, tuple[str, str]]:
    """item -> (status, id) of the map's tasks in the store, read without writing to it."""
    reader = nbtasks.App(store=store, read_only=True)
    try:
        out = {}
        for r in reader.results(task_name="resume.work"):
            if r.status is not TaskStatus.INTERRUPTED or int(r.args[0]) not in out:
                out[int(r.args[0])] = (r.status.value, r.id)
        return out
    finally:
        reader.shutdown()


def test_a_map_resumes_after_its_process_was_killed(tmp_path: Path) -> None:
    store, runs, script = tmp_path / "store", tmp_path / "runs.txt", tmp_path / "resume.py"
    script.write_text(SCRIPT)
    first = subprocess.Popen(
        [sys.executable, str(script), str(store), str(runs), "first", str(N)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "submitted"

        def some_done() -> bool:
            done = [s for s, _id in _statuses(store).values() if s == "SUCCESSFUL"]
            return 3 <= len(done) < N

        wait_until(some_done, timeout=30, interval=0.01)
    finally:
        first.kill()
        first.wait(30)
        if first.stdout is not None:
            first.stdout.close()
    before = _statuses(store)  # what the killed run committed (as the sweep will see it)
    done_before = {x: tid for x, (status, tid) in before.items() if status == "SUCCESSFUL"}
    assert 3 <= len(done_before) < N
    ran_before = Counter(int(line) for line in runs.read_text().split())

    second = subprocess.run(
        [sys.executable, str(script), str(store), str(runs), "second", str(N)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert second.returncode == 0, second.stderr
    out = json.loads(second.stdout.strip().splitlines()[-1])
    assert out["values"] == [x * 10 for x in range(N)]
    for x in range(N):
        if x in done_before:  # reused: the same task, never run again
            assert out["ids"][x] == done_before[x] and out["cached"][x] is True
        else:  # computed now: a new task, not the killed run's (INTERRUPTED) one
            assert out["cached"][x] is False
            assert out["ids"][x] != before.get(x, ("", ""))[1]
    ran = Counter(int(line) for line in runs.read_text().split())
    for x in range(N):
        expected = ran_before[x] + (0 if x in done_before else 1)
        assert ran[x] == expected, (x, ran_before, ran)
    # The killed run's unfinished tasks were swept INTERRUPTED, and stay so.
    after = nbtasks.App(store=store, read_only=True)
    try:
        stale = [
            r
            for r in after.results(task_name="resume.work")
            if r.id in {tid for _s, tid in before.values()} and r.id not in out["ids"]
        ]
        assert stale and all(r.status is TaskStatus.INTERRUPTED for r in stale)
    finally:
        after.shutdown()
