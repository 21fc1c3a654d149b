"""Load: several processes on one store at once, then every record is checked.

4 processes x 2,000 tasks (thread executor in each), started together: each checks its own
records, then this process checks all 8,000 (complete, consistent, each run exactly once: every
run appends its task id to a side-effect file). Then two processes cancel and read the same
tasks at once: every task ends CANCELLED or SUCCESSFUL, and all readers agree.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from helpers import REPO, wait_until

import nbtasks
from nbtasks._model import TaskStatus

pytestmark = pytest.mark.slow

PROCESSES = 4
TASKS = 2000

_LOADER = """
import json, os, sys, time
import nbtasks

store, who, go, side = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
N = int(sys.argv[5])
app = nbtasks.App(store=store, workers=4)


@app.task(name="load.work", bind=True)
def work(self, who, i):
    # The side effect: one line per run, appended (O_APPEND) to this process's file.
    fd = os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, (self.request.id + "\\n").encode())
    os.close(fd)
    self.progress(i, N)
    return {"who": who, "i": i, "pid": os.getpid()}


open(go + "." + who, "w").close()  # ready: imported, store open
while not os.path.exists(go):  # start together
    time.sleep(0.001)
t0 = time.time()
results = []
half = N // 2
for start in range(0, half, 250):  # half in groups (one transaction each) ...
    g = work.starmap([(who, i) for i in range(start, min(start + 250, half))])
    results += g.results
for i in range(half, N):  # ... and half one by one
    results.append(work.apply_async((who, i), metadata={"who": who}))
for r in results:
    r.wait(120)
t1 = time.time()
app.store.flush()

# Check every one of its records, as committed.
for r in results:
    rec = app.store.read_record(r.id)
    assert rec["status"] == "SUCCESSFUL", rec
    i = r.args[1]
    assert r.return_value == {"who": who, "i": i, "pid": os.getpid()}
    assert len(rec["worker_ids"]) == 1 and not rec.get("errors"), rec
    assert rec["started_at"] <= rec["finished_at"], rec
    assert rec["progress"] is not None
app.shutdown()
print(json.dumps({"ids": [r.id for r in results], "t0": t0, "t1": t1}))
"""


def _python(code: str, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(REPO),
    )


def test_four_processes_of_2000_tasks_on_one_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    go = tmp_path / "go"
    nbtasks.App(store=store).shutdown()  # created once, before they race to open it
    procs = {
        f"p{k}": _python(
            _LOADER, str(store), f"p{k}", str(go), str(tmp_path / f"p{k}.runs"), str(TASKS)
        )
        for k in range(PROCESSES)
    }
    wait_until(lambda: all(Path(f"{go}.{who}").exists() for who in procs), timeout=120)
    go.touch()
    outs = {}
    for who, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, (who, err[-3000:])
        outs[who] = json.loads(out.strip().splitlines()[-1])
    t0 = min(o["t0"] for o in outs.values())
    t1 = max(o["t1"] for o in outs.values())
    total = PROCESSES * TASKS
    rate = total / (t1 - t0)
    print(
        f"\n{PROCESSES} processes x {TASKS} tasks: {total} in {t1 - t0:.2f}s = {rate:.0f} tasks/s"
    )

    # Every run happened exactly once: no lost task, no duplicate run.
    for who, o in outs.items():
        runs = Counter((tmp_path / f"{who}.runs").read_text().split())
        assert set(runs) == set(o["ids"]), who
        assert set(runs.values()) == {1}, [t for t, n in runs.items() if n > 1][:5]
    # All 8,000 records, read back by another App: complete and consistent.
    reader = nbtasks.App(store=store)
    try:
        assert reader.store.count() == total
        assert reader.store.count(status="SUCCESSFUL") == total
        seen = set()
        for r in reader.results(task_name="load.work"):
            who, i = r.args
            value = r.return_value
            assert value["who"] == who and value["i"] == i, (r.id, value)
            assert r.attempts == 1 and r.errors == []
            assert r.progress is not None and r.progress.current == i
            assert r.enqueued_at <= r.started_at <= r.finished_at  # type: ignore[operator]
            seen.add((who, i))
            assert r.id in outs[who]["ids"]
        assert seen == {(f"p{k}", i) for k in range(PROCESSES) for i in range(TASKS)}
    finally:
        reader.shutdown()


_OWNER = """
import json, os, sys, time
import nbtasks

store, ids_file, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
app = nbtasks.App(store=store, workers=4)


@app.task(name="slow", bind=True)
def slow(self, i):
    for k in range(20):
        self.progress(k, 20)
        time.sleep(0.01)
    return i


results = [slow.delay(i) for i in range(n)]
app.store.flush()
with open(ids_file + ".tmp", "w") as f:
    json.dump([r.id for r in results], f)
os.replace(ids_file + ".tmp", ids_file)
time.sleep(0.2)
# The owner cancels every 4th task itself, while the other process cancels every 2nd one.
mine = {r.id: r.cancel() for r in results[::4]}
for r in results:
    r.wait(60)
app.store.flush()
final = {r.id: r.status.value for r in results}
for r in results:
    assert app.store.read_record(r.id)["status"] == final[r.id]
app.shutdown()
print(json.dumps({"final": final, "cancelled": mine}))
"""

_CANCELLER = """
import json, os, sys, time
import nbtasks

store, ids_file = sys.argv[1], sys.argv[2]
while not os.path.exists(ids_file):
    time.sleep(0.005)
with open(ids_file) as f:
    ids = json.load(f)
app = nbtasks.App(store=store)
order = {"READY": 0, "RUNNING": 1}
seen = {tid: "READY" for tid in ids}
cancelled = {}
for k, tid in enumerate(ids):
    if k % 2 == 0:
        cancelled[tid] = app.result(tid).cancel()
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    for tid in ids:
        status = app.result(tid).status.value
        before = seen[tid]
        # Never backwards: READY -> RUNNING -> a final status, which never changes.
        assert order.get(status, 2) >= order.get(before, 2), (tid, before, status)
        if before not in order:
            assert status == before, (tid, before, status)
        seen[tid] = status
    if all(s not in order for s in seen.values()):
        break
    time.sleep(0.02)
app.shutdown()
print(json.dumps({"final": seen, "cancelled": cancelled}))
"""


def test_two_processes_cancel_and_read_the_same_tasks(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ids_file = tmp_path / "ids.json"
    n = 60
    nbtasks.App(store=store).shutdown()
    owner = _python(_OWNER, str(store), str(ids_file), str(n))
    other = _python(_CANCELLER, str(store), str(ids_file))
    out_o, err_o = owner.communicate(timeout=120)
    out_c, err_c = other.communicate(timeout=120)
    assert owner.returncode == 0, err_o[-3000:]
    assert other.returncode == 0, err_c[-3000:]
    o, c = json.loads(out_o.strip().splitlines()[-1]), json.loads(out_c.strip().splitlines()[-1])
    ids = list(o["final"])
    assert len(ids) == n
    # None stuck, all agree: the owner, the other process, and a fresh reader.
    assert c["final"] == o["final"]
    reader = nbtasks.App(store=store)
    try:
        for k, tid in enumerate(ids):
            r = reader.result(tid)
            assert r.status.value == o["final"][tid]
            assert r.status in (TaskStatus.CANCELLED, TaskStatus.SUCCESSFUL), (tid, r.status)
            asked = (k % 2 == 0 and c["cancelled"][tid]) or (k % 4 == 0 and o["cancelled"][tid])
            if r.status is TaskStatus.SUCCESSFUL:
                assert r.return_value == k
            else:
                assert asked, (k, tid)  # only a task someone cancelled is CANCELLED
                with pytest.raises(nbtasks.TaskCancelled):
                    r.return_value  # noqa: B018
            if k % 2 == 1 and k % 4 != 0:
                assert r.status is TaskStatus.SUCCESSFUL
            # cancel() said False only for a task that had finished already.
            if k % 2 == 0 and c["cancelled"][tid] is False:
                assert r.status is TaskStatus.SUCCESSFUL or (k % 4 == 0 and o["cancelled"][tid])
        statuses = Counter(o["final"].values())
        print("\ncancel test:", dict(statuses))
        # 30 were asked to stop, most of them before they finished (4 run at a time, 0.2 s each).
        assert statuses["CANCELLED"] >= 15, statuses
        assert reader.store.count(status=["READY", "RUNNING"]) == 0
    finally:
        reader.shutdown()
