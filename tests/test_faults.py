"""Faults survived: each test breaks something on purpose, then asserts what the store holds.

A process SIGKILLed while it commits, a full disk (injected at the store boundary, and a real
tmpfs filled up), a damaged ``cache.db``, a store from a newer nbtasks, a value file gone, and
a result too large to be copied around (its memory is measured).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    POSIX_ONLY,
    committed,
    ready_task_of_a_dead_process,
    run_python,
    start_python,
    wait_until,
)

import nbtasks
from nbtasks import store as _store
from nbtasks._model import TaskStatus
from nbtasks.store import writer

AppFactory = Callable[..., nbtasks.App]
FINISHED = {"SUCCESSFUL", "FAILED", "CANCELLED", "INTERRUPTED"}


def _rows(store: Path) -> list[tuple[str, Any]]:
    """(key, value) of every row, read with plain sqlite: no diskcache, no nbtasks."""
    con = sqlite3.connect(store / "cache.db")
    try:
        return list(con.execute("SELECT key, value FROM Cache ORDER BY key"))
    finally:
        con.close()


def _integrity(store: Path) -> str:
    con = sqlite3.connect(store / "cache.db")
    try:
        return str(con.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        con.close()


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- SIGKILL


_COMMITTER = """
import json, os, sys, time
import nbtasks

app = nbtasks.App(store={store!r}, workers=4)


@app.task(name="square")
def square(i):
    return {{"i": i, "sq": i * i}}


@app.task(name="blob")
def blob(i):
    return (i, bytes([i % 256]) * 40_000)  # a value file of its own


@app.task(name="spin", bind=True)
def spin(self, i):
    for k in range(100_000):
        self.progress(k, 100_000)
        time.sleep(0.001)


done = square.map(range(300))
blobs = [blob.delay(i) for i in range(10)]
done.get(30)
for b in blobs:
    b.get(30)
app.store.flush()
print(json.dumps([r.id for r in done.results] + [b.id for b in blobs]), flush=True)
running = [spin.delay(i).id for i in range(2)]
while any(app.store.read_record(t)["status"] != "RUNNING" for t in running):
    pass  # until their RUNNING records are committed (the test kills it after this line)
print(json.dumps(running), flush=True)
i = 1000
while True:  # commit as fast as it can until it is killed
    square.map(range(i, i + 100))
    blob.delay(i)
    i += 100
"""


def _check_every_record(app: nbtasks.App) -> dict[str, int]:
    """Every record decodes, is finished, and holds what its task computed."""
    counts: dict[str, int] = {}
    for r in app.results():
        status = r.status.value
        counts[status] = counts.get(status, 0) + 1
        assert status in FINISHED, (r.id, status)
        if status == "SUCCESSFUL":
            (i,) = r.args
            if r.task_name == "square":
                assert r.return_value == {"i": i, "sq": i * i}
            else:
                assert r.task_name == "blob"
                assert r.return_value == (i, bytes([i % 256]) * 40_000)
        elif status == "INTERRUPTED":
            assert r.reason is not None and "owner process" in r.reason
            assert r.finished_at is not None
            with pytest.raises(nbtasks.TaskInterrupted):
                r.return_value  # noqa: B018
    return counts


@POSIX_ONLY
@pytest.mark.parametrize("after", [0.05, 0.4])
def test_a_process_killed_while_committing_leaves_a_sound_store(
    store_path: Path, make_app: AppFactory, after: float
) -> None:
    proc = start_python(_COMMITTER.format(store=str(store_path)))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        finished_before = json.loads(line)
        running = json.loads(proc.stdout.readline())
        time.sleep(after)  # mid-write: map commits, value files, progress of the spinners
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert _integrity(store_path) == "ok"
    app = make_app()  # opens; its sweep finds the dead owner's unfinished tasks
    assert app.store.count(status=["READY", "RUNNING"]) == 0
    for tid in running:
        r = app.result(tid)
        assert r.status is TaskStatus.INTERRUPTED
        assert r.started_at is not None  # it was RUNNING when it was killed
    for tid in finished_before:
        assert app.result(tid).status is TaskStatus.SUCCESSFUL
    counts = _check_every_record(app)
    assert counts["SUCCESSFUL"] >= len(finished_before)
    assert counts["INTERRUPTED"] >= len(running)
    # Every group committed with its members: all of them are there.
    groups = [json.loads(v) for k, v in _rows(store_path) if k.startswith("g:")]
    assert groups
    for g in groups:
        for tid in g["members"]:
            app.result(tid).status  # noqa: B018  (UnknownTaskId if a member were missing)

    # The store goes on working.
    @app.task(name="square")
    def square(i: int) -> dict[str, int]:
        return {"i": i, "sq": i * i}

    assert square.delay(3).get(10) == {"i": 3, "sq": 9}


# --------------------------------------------------------------------------- disk full


class DiskFull:
    """Makes every commit of the store fail with ENOSPC while ``on``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.on = False
        self.failures = 0
        real = writer.upsert

        def upsert(con: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
            if self.on:
                self.failures += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real(con, rows)

        monkeypatch.setattr(writer, "upsert", upsert)


def test_disk_full_fails_submits_clearly_and_retries_the_rest(
    store_path: Path, make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="nbtasks")
    disk = DiskFull(monkeypatch)
    app = make_app(workers=4)
    reader = make_app()
    gate = threading.Event()

    @app.task
    def double(x: int) -> int:
        return 2 * x

    @app.task
    def big(x: int) -> bytes:
        gate.wait(10)
        return bytes([x]) * 100_000

    earlier = double.delay(1)
    earlier_big = big.delay(1)
    gate.set()
    assert earlier.get(10) == 2 and len(earlier_big.get(10)) == 100_000
    gate.clear()
    waiting = [big.delay(x) for x in (2, 3)]  # READY/RUNNING when the disk fills up
    app.store.flush()
    before = reader.store.count()

    disk.on = True
    # A submit fails at once, clearly, and stores nothing.
    for submit in (lambda: double.delay(5), lambda: double.map(range(10))):
        with pytest.raises(nbtasks.StoreError) as info:
            submit()
        message = str(info.value)
        assert str(store_path) in message and "nothing was stored" in message
        assert "No space left on device" in message and "Free some space" in message
    # Tasks already submitted finish: this process sees them at once, the store later.
    gate.set()
    for r in waiting:
        assert r.get(10) == bytes([r.args[0]]) * 100_000
        assert r.status is TaskStatus.SUCCESSFUL
    wait_until(lambda: disk.failures >= 3)  # the writer keeps retrying
    for r in waiting:
        assert committed(app, r.id)["status"] in ("READY", "RUNNING")
    # A failed submit while their large values wait to be written does not drop them.
    with pytest.raises(nbtasks.StoreError):
        double.delay(6)
    # Earlier results stay readable, from this process and from another App.
    assert reader.result(earlier.id).return_value == 2
    assert reader.result(earlier_big.id).return_value == b"\x01" * 100_000
    assert reader.store.count() == before
    assert app.result(earlier.id).get(1) == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "nbtasks"]
    assert any("could not write to the store" in w and "No space left" in w for w in warnings)

    disk.on = False  # space comes back: what was kept in memory is written
    for r in waiting:
        wait_until(lambda r=r: committed(app, r.id)["status"] == "SUCCESSFUL", timeout=5)
    fresh = make_app()
    for r in waiting:
        assert fresh.result(r.id).return_value == bytes([r.args[0]]) * 100_000
    assert any("writes to the store" in r.getMessage() for r in caplog.records)
    # The process kept working: new submits succeed, nothing half-written is left.
    assert double.delay(7).get(10) == 14
    assert fresh.store.count() == before + 1
    assert _integrity(store_path) == "ok"
    assert app.store.writer_error is None


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (root only; skipped where mount is not allowed)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_a_real_full_disk(small_disk: Path, make_app: AppFactory) -> None:
    store = small_disk / "store"
    app = make_app(store=store, workers=2)
    reader = make_app(store=store)
    gate = threading.Event()

    @app.task
    def double(x: int) -> int:
        return 2 * x

    @app.task
    def big(x: int) -> bytes:
        gate.wait(10)
        return bytes([x]) * 60_000

    earlier = double.delay(1)
    earlier_big = big.delay(1)
    gate.set()
    assert earlier.get(10) == 2 and len(earlier_big.get(10)) == 60_000
    gate.clear()
    late = big.delay(2)
    app.store.flush()
    before = reader.store.count()
    filler = small_disk / "filler"
    _fill(filler)
    with pytest.raises(nbtasks.StoreError, match="disk that holds it is full") as info:
        for x in range(20):  # the WAL may have room for a few
            double.delay(x)
    assert "nothing was stored" in str(info.value)
    gate.set()
    assert late.get(10) == b"\x02" * 60_000  # finished in memory
    wait_until(lambda: app.store.writer_error is not None)
    assert reader.result(earlier.id).return_value == 2
    assert reader.result(earlier_big.id).return_value == b"\x01" * 60_000
    stored = reader.store.count()
    assert stored >= before
    # Failed commits leave no value files behind (one per retry would fill the disk for good).
    values = list(store.rglob("*.val"))
    assert len(values) <= 2, values

    filler.unlink()
    wait_until(lambda: committed(app, late.id)["status"] == "SUCCESSFUL", timeout=5)
    assert reader.result(late.id).return_value == b"\x02" * 60_000
    assert double.delay(21).get(10) == 42
    app.store.flush()
    assert reader.store.count() == stored + 1
    for r in reader.results():
        assert r.status is TaskStatus.SUCCESSFUL
        assert r.return_value is not None
    assert _integrity(store) == "ok"


# --------------------------------------------------------------------------- damage


@pytest.fixture(scope="module")
def stored_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of 300 finished tasks, written by a process that has exited (so everything is
    checkpointed into cache.db and no -wal is left)."""
    store = tmp_path_factory.mktemp("template") / "store"
    proc = run_python(
        f"""
        import nbtasks
        app = nbtasks.App(store={str(store)!r})
        @app.task
        def item(i):
            return (i, "x" * 100)
        item.map(range(300)).get(30)
        app.shutdown()
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert not (store / "cache.db-wal").exists()
    return store


def _damage(db: Path, how: str) -> None:
    size = db.stat().st_size
    if how == "zero bytes":
        db.write_bytes(b"")
    elif how == "truncated to half":
        with open(db, "r+b") as f:
            f.truncate(size // 2 // 4096 * 4096)
    elif how == "truncated to one page":
        with open(db, "r+b") as f:
            f.truncate(4096)
    elif how == "garbage":
        db.write_bytes(os.urandom(size))
    elif how == "garbage pages":
        with open(db, "r+b") as f:
            f.seek(size // 2 // 4096 * 4096)
            f.write(os.urandom(4 * 4096))
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    ["zero bytes", "truncated to half", "truncated to one page", "garbage", "garbage pages"],
)
def test_a_damaged_database_is_refused_naming_the_path_and_the_remedy(
    store_path: Path, make_app: AppFactory, how: str, stored_template: Path
) -> None:
    shutil.copytree(stored_template, store_path)
    db = store_path / "cache.db"
    _damage(db, how)
    damaged = db.read_bytes()
    with pytest.raises(nbtasks.StoreError) as info:
        # Damage in pages that opening does not read shows at the first query.
        app = make_app()
        app.results()
    message = str(info.value)
    assert str(store_path) in message, message
    assert "damaged" in message
    assert f"mv {store_path} {store_path}.broken" in message  # the remedy, spelled out
    # Never "repaired" into an empty store. (diskcache rewrites its Settings rows whenever it
    # opens a store: where the damage is in pages that opening does not read, those change.)
    after = db.read_bytes()
    assert len(after) == len(damaged)
    if how == "garbage pages":
        start = len(damaged) // 2 // 4096 * 4096
        assert after[start : start + 4 * 4096] == damaged[start : start + 4 * 4096]
    else:
        assert after == damaged
    # The remedy works: moved aside, a new store is made in its place.
    store_path.rename(store_path.with_name("store.broken"))
    assert make_app().store.count() == 0


def test_a_missing_value_file_is_a_clear_error_and_the_rest_reads(
    store_path: Path, make_app: AppFactory
) -> None:
    a = make_app()

    @a.task
    def big(i: int) -> bytes:
        return bytes([i]) * 50_000

    one, two = big.delay(1), big.delay(2)
    assert len(one.get(10)) == len(two.get(10)) == 50_000
    a.shutdown()
    con = sqlite3.connect(store_path / "cache.db")
    (filename,) = con.execute(
        "SELECT filename FROM Cache WHERE key = ?", (f"v:{one.id}:rv",)
    ).fetchone()
    con.close()
    (store_path / filename).unlink()
    reader = make_app()
    with pytest.raises(nbtasks.StoreError, match="missing") as info:
        reader.result(one.id).return_value  # noqa: B018
    assert str(store_path) in str(info.value)
    assert reader.result(two.id).return_value == b"\x02" * 50_000
    assert {r.id for r in reader.results()} == {one.id, two.id}


def test_a_store_from_a_newer_nbtasks_is_refused_untouched(
    store_path: Path, make_app: AppFactory
) -> None:
    # A store whose writer died with a task READY: an older nbtasks must not sweep it.
    ready_task_of_a_dead_process(store_path)
    con = sqlite3.connect(store_path / "cache.db")
    with con:
        con.execute("UPDATE Cache SET value = ? WHERE key = 'nbtasks:schema'", (_store.SCHEMA + 1,))
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    before = _snapshot(store_path)
    with pytest.raises(nbtasks.StoreError) as info:
        make_app()
    message = str(info.value)
    assert str(store_path) in message
    assert f"schema {_store.SCHEMA + 1}" in message and "newer" in message
    assert "pip install -U nbtasks" in message
    after = _snapshot(store_path)
    after.pop("cache.db-wal", None)
    after.pop("cache.db-shm", None)
    # .lock holds the pid of whoever last took the lock (named when a waiter gives up)
    assert after.pop(".lock").strip() == str(os.getpid()).encode()
    before.pop(".lock", None)
    assert after == {k: v for k, v in before.items() if not k.startswith("cache.db-")}
    statuses = [json.loads(v)["status"] for k, v in _rows(store_path) if k.startswith("t:")]
    assert statuses == ["READY"]  # not swept to INTERRUPTED by the older version


# --------------------------------------------------------------------------- large values

_LARGE = """
import gc, json, os, sys, tracemalloc
import nbtasks

N = 50 * 1024 * 1024
store = sys.argv[1]


def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024


def peak_rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024


def measure(step):
    gc.collect()
    base = rss()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS
    tracemalloc.start()
    out = step()
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, traced / N, (peak_rss() - base) / N


app = nbtasks.App(store=store)


@app.task(name="big")
def big():
    return os.urandom(N)


nbtasks._codec.cloudpickle()  # imported before measuring


def write():
    r = big.delay()
    r.wait(60)
    app.store.flush()
    return r.id


tid, w_traced, w_rss = measure(write)
app.shutdown()
del app
reader = nbtasks.App(store=store)


def read():
    value = reader.result(tid).return_value
    return len(value)


n, r_traced, r_rss = measure(read)
print(json.dumps({"id": tid, "n": n, "write": [w_traced, w_rss], "read": [r_traced, r_rss]}))
"""


def test_a_50_mb_result_goes_to_a_file_and_is_never_held_three_times(store_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _LARGE, str(store_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0 and "clear_refs" in proc.stderr:
        pytest.skip("cannot reset the peak RSS here")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    n = 50 * 1024 * 1024
    assert out["n"] == n
    # The value (made by the task) plus its pickle; reading: the file's bytes plus the value.
    for step in ("write", "read"):
        traced, rss = out[step]
        assert traced < 2.5, (step, out)
        assert rss < 2.5, (step, out)
    # It is a file of its own, not part of the record.
    (record,) = [v for k, v in _rows(store_path) if k == "t:" + out["id"]]
    assert len(record) < 2000
    con = sqlite3.connect(store_path / "cache.db")
    (filename, size) = con.execute(
        "SELECT filename, size FROM Cache WHERE key = ?", (f"v:{out['id']}:rv",)
    ).fetchone()
    con.close()
    assert size > n and (store_path / filename).stat().st_size == size


# --------------------------------------------------------------------------- space


@POSIX_ONLY
def test_purge_then_vacuum_gives_the_space_back(store_path: Path, make_app: AppFactory) -> None:
    a = make_app()

    @a.task
    def item(i: int) -> Any:
        return bytes([i % 256]) * 40_000 if i % 50 == 0 else (i, "x" * 200)

    a.store.flush()
    start = sum(p.stat().st_blocks * 512 for p in store_path.rglob("*") if p.is_file())
    g = item.map(range(2000))
    g.get(30)
    keep = item.apply_async((7,), countdown=3600)  # READY: not purged
    a.store.flush()
    # Litter that only vacuum() cleans: a value whose task is gone, a file no entry refers to.
    a.store.cache.set("v:gone-task:rv", b"\0" * 50_000)
    orphan = store_path / "ab" / "cd" / "0123456789abcdef0123456789ab.val"  # diskcache: 28 hex
    orphan.parent.mkdir(parents=True, mode=0o700)
    orphan.write_bytes(b"\0" * 50_000)
    assert a.purge(status=["SUCCESSFUL", "FAILED"]) == 2000
    keys = [k for k, _ in _rows(store_path)]
    assert not any(k.startswith("g:") for k in keys)  # the group went with its last member
    assert a.purge(vacuum=True) == 0
    keys = [k for k, _ in _rows(store_path)]
    assert sorted(k for k in keys if k[:2] in ("t:", "g:", "v:")) == ["t:" + keep.id]
    assert orphan.exists()  # too new: it may be a file another process is writing
    a.store.vacuum(orphan_age=0)
    assert not orphan.exists() and not orphan.parent.exists()
    size = sum(p.stat().st_blocks * 512 for p in store_path.rglob("*") if p.is_file())
    assert size < start + 200_000, (start, size)
    assert make_app().result(keep.id).args == [7]
    assert _integrity(store_path) == "ok"


def test_purge_refuses_bad_statuses_and_durations(app: nbtasks.App) -> None:
    for bad, error in (
        ([], ValueError),
        (["SUCCESSFUL", "RUNNING"], ValueError),
        ("READY", ValueError),
        (["nope"], ValueError),
        (5, ValueError),
    ):
        with pytest.raises(error, match="status"):
            app.purge(status=bad)
    for older in (float("nan"), -1, "7d", True):
        with pytest.raises(ValueError, match="older_than"):
            app.purge(older_than=older)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="vacuum"):
        app.purge(vacuum="yes")  # type: ignore[arg-type]
