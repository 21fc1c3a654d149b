"""nbtasks.store: a real diskcache store on disk in ``tmp_path``.

Opening (schema, corruption, permissions, owners), READY records committed at submit, the
group-committing writer, the dead-owner sweep, several Apps and processes on one store, the
private diskcache layout the queries rely on, and signed values.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diskcache
import pytest
from helpers import POSIX_ONLY, committed, start_python, stored_count, wait_until

import nbtasks
from nbtasks._model import IllegalTransition, TaskStatus
from nbtasks.store import identity, opening, owners, queries, records, writer
from nbtasks.store.files import MARKER

AppFactory = Callable[..., nbtasks.App]


def _records(path: Path) -> list[tuple[str, Any, Any, int]]:
    """(key, tag, value, mode) of every row, read with plain sqlite (no diskcache, no pickle)."""
    import sqlite3

    con = sqlite3.connect(path / "cache.db")
    try:
        return list(con.execute("SELECT key, tag, value, mode FROM Cache ORDER BY key"))
    finally:
        con.close()


# --------------------------------------------------------------------------- opening


def test_a_new_store_is_a_diskcache_opened_as_a_store(app: nbtasks.App, store_path: Path) -> None:
    cache = app.store.cache
    assert isinstance(cache, diskcache.Cache)
    assert cache.eviction_policy == "none"  # the default would evict results past 1 GB
    assert cache.get("nbtasks:schema") == opening.SCHEMA
    marker = json.loads((store_path / MARKER).read_text())
    assert marker["schema"] == opening.SCHEMA
    assert app.store.path == store_path


def test_store_reopens_with_its_records(store_path: Path, make_app: AppFactory) -> None:
    a = make_app()

    @a.task
    def add(x: int, y: int) -> int:
        return x + y

    r = add.delay(1, 2)
    assert r.get(10) == 3
    a.shutdown()
    b = make_app()
    again = b.result(r.id)
    assert again.status is TaskStatus.SUCCESSFUL
    assert again.return_value == 3
    assert again.args == [1, 2]


def test_open_cache_object_is_accepted_as_the_store(tmp_path: Path) -> None:
    """SPEC 1: ``store`` is a directory or an open ``diskcache.Cache``."""
    cache = diskcache.Cache(str(tmp_path / "existing"))
    try:
        a = nbtasks.App(store=cache)
        try:
            assert a.store.path == tmp_path / "existing"
        finally:
            a.shutdown()
    finally:
        cache.close()


def test_an_open_cache_of_an_nbtasks_store_is_accepted(
    store_path: Path, make_app: AppFactory
) -> None:
    make_app().shutdown()  # creates the store
    cache = diskcache.Cache(str(store_path))
    try:
        b = make_app(store=cache)
        assert b.store.path == store_path
        assert b.results() == []
    finally:
        cache.close()


def test_bad_store_argument_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="store"):
        nbtasks.App(store=123)  # type: ignore[arg-type]


def test_newer_schema_is_refused_and_kept(store_path: Path, make_app: AppFactory) -> None:
    a = make_app()

    @a.task
    def one() -> int:
        return 1

    one.delay().get(10)
    a.shutdown()
    with diskcache.Cache(str(store_path)) as raw:
        raw.set("nbtasks:schema", opening.SCHEMA + 1)
    with pytest.raises(nbtasks.StoreError) as info:
        nbtasks.App(store=store_path)
    message = str(info.value)
    assert str(store_path) in message
    assert "newer" in message and "pip install -U nbtasks" in message
    # Nothing was wiped.
    keys = [k for k, *_ in _records(store_path)]
    assert sum(k.startswith("t:") for k in keys) == 1


def test_lost_schema_key_is_refused(store_path: Path, make_app: AppFactory) -> None:
    make_app().shutdown()
    with diskcache.Cache(str(store_path)) as raw:
        del raw["nbtasks:schema"]
    with pytest.raises(nbtasks.StoreError, match="schema"):
        nbtasks.App(store=store_path)


def test_a_diskcache_that_is_not_an_nbtasks_store_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other"
    with diskcache.Cache(str(other)) as raw:
        raw.set("someone", "else's data")
    with pytest.raises(nbtasks.StoreError, match="not an nbtasks store") as info:
        nbtasks.App(store=other)
    assert str(other) in str(info.value)
    with diskcache.Cache(str(other)) as raw:
        assert raw.get("someone") == "else's data"


def _close_and_drop_wal(store_path: Path) -> None:
    for name in ("cache.db-wal", "cache.db-shm"):
        (store_path / name).unlink(missing_ok=True)


def test_zero_byte_database_is_refused_naming_the_path(
    store_path: Path, make_app: AppFactory
) -> None:
    make_app().shutdown()
    db = store_path / "cache.db"
    _close_and_drop_wal(store_path)
    db.write_bytes(b"")
    with pytest.raises(nbtasks.StoreError) as info:
        nbtasks.App(store=store_path)
    message = str(info.value)
    assert str(db) in message
    assert "0 bytes" in message or "empty" in message
    assert "mv " in message  # says what to do
    assert db.stat().st_size == 0  # not silently recreated as an empty store
    assert (store_path / MARKER).exists()


def test_garbage_database_is_refused_naming_the_path(
    store_path: Path, make_app: AppFactory
) -> None:
    make_app().shutdown()
    db = store_path / "cache.db"
    _close_and_drop_wal(store_path)
    garbage = os.urandom(8192)
    db.write_bytes(garbage)
    with pytest.raises(nbtasks.StoreError) as info:
        nbtasks.App(store=store_path)
    assert str(store_path) in str(info.value)
    assert db.read_bytes() == garbage  # never wiped


def test_missing_database_is_refused(store_path: Path, make_app: AppFactory) -> None:
    make_app().shutdown()
    _close_and_drop_wal(store_path)
    (store_path / "cache.db").unlink()
    with pytest.raises(nbtasks.StoreError, match="missing"):
        nbtasks.App(store=store_path)


@POSIX_ONLY
def test_store_writable_by_others_is_refused_unless_trusted(
    store_path: Path, make_app: AppFactory
) -> None:
    make_app().shutdown()
    store_path.chmod(0o777)
    try:
        with pytest.raises(nbtasks.StoreError) as info:
            nbtasks.App(store=store_path)
        assert "chmod 700" in str(info.value) and "trust=True" in str(info.value)
        trusted = make_app(trust=True)
        assert trusted.results() == []
    finally:
        store_path.chmod(0o700)


# --------------------------------------------------------------------------- permissions


@POSIX_ONLY
def test_store_is_owner_only_including_wal_shm_and_value_files(
    store_path: Path, make_app: AppFactory
) -> None:
    old_umask = os.umask(0o022)  # the usual umask: diskcache alone would make 0755/0644
    try:
        a = make_app()

        @a.task
        def big(blob: bytes) -> str:
            return "x" * 100_000  # a large JSON record: diskcache writes it to a file

        @a.task
        def big_pickle(blob: bytes) -> tuple[bytes, bytes]:
            return (blob, blob)  # a large signed pickle: its own file

        big.delay(b"y" * 100_000).get(10)
        big_pickle.delay(b"z" * 50_000).get(10)
        a.store.flush()
        files = []
        for root, dirs, names in os.walk(store_path):
            for d in dirs:
                mode = stat.S_IMODE(os.stat(os.path.join(root, d)).st_mode)
                assert not mode & 0o022, (d, oct(mode))
            files += [Path(root) / n for n in names]
        assert stat.S_IMODE(store_path.stat().st_mode) == 0o700
        names = {f.name for f in files}
        assert {"cache.db", "cache.db-wal", "cache.db-shm"} <= names
        values = [f for f in files if f.suffix == ".val"]
        assert len(values) >= 3  # the large args, the large record and the large pickle
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, (f, oct(f.stat().st_mode))
    finally:
        os.umask(old_umask)


@POSIX_ONLY
def test_store_parents_are_created(tmp_path: Path, make_app: AppFactory) -> None:
    deep = tmp_path / "a" / "b" / "store"
    a = make_app(store=deep)
    assert a.store.path == deep
    assert stat.S_IMODE(deep.stat().st_mode) == 0o700


# --------------------------------------------------------------------------- durability


def test_ready_record_is_committed_when_delay_returns(make_app: AppFactory) -> None:
    a = make_app(workers=1)
    reader = make_app()  # a second App on the same store: sees only what is committed
    gate = threading.Event()

    @a.task
    def blocker() -> str:
        gate.wait(10)
        return "done"

    @a.task
    def queued(x: int) -> int:
        return x

    first = blocker.delay()
    try:
        second = queued.delay(7)
        rec = committed(reader, second.id)  # at once, no waiting
        assert rec["status"] == "READY"
        assert rec["task_name"] == queued.name
        assert reader.result(second.id).args == [7]
        assert committed(reader, first.id)["status"] in ("READY", "RUNNING")
    finally:
        gate.set()
    assert second.get(10) == 7


def test_map_commits_every_record_and_the_group_at_once(make_app: AppFactory) -> None:
    a = make_app(workers=1)
    reader = make_app()
    gate = threading.Event()

    @a.task
    def wait_then(x: int) -> int:
        gate.wait(10)
        return x

    g = wait_then.map(range(5))
    try:
        ids = [r.id for r in g.results]
        for tid in ids:
            assert committed(reader, tid)["status"] in ("READY", "RUNNING")
        group = reader.group_result(g.id)
        assert [r.id for r in group.results] == ids
    finally:
        gate.set()
    assert g.get(10) == [0, 1, 2, 3, 4]


def test_changes_are_group_committed_within_0_2_s(make_app: AppFactory) -> None:
    """SPEC 3: status, progress, metadata, the result reach the store within 0.2 s.

    Allowance: 0.2 s plus 0.1 s of scheduling slack for this shared test machine."""
    a = make_app()
    reader = make_app()
    started, step, finish = threading.Event(), threading.Event(), threading.Event()

    @a.task
    def stepwise(ctx: nbtasks.Context) -> str:
        started.set()
        step.wait(10)
        ctx.progress(5, 10, "half")
        ctx.update_state(state="PROGRESS", meta={"at": 5})
        finish.wait(10)
        return "end"

    def visible(pred: Callable[[dict[str, Any]], bool]) -> float:
        t0 = time.monotonic()
        wait_until(lambda: pred(committed(reader, r.id)), timeout=5, interval=0.001)
        return time.monotonic() - t0

    r = stepwise.delay()
    try:
        assert started.wait(5)
        lag_running = visible(lambda rec: rec["status"] == "RUNNING")
        step.set()
        lag_progress = visible(
            lambda rec: rec.get("progress") is not None and rec.get("state") == "PROGRESS"
        )
        seen = reader.result(r.id)  # another App: reads what is committed
        assert seen.status is TaskStatus.RUNNING
        assert seen.progress is not None
        assert (seen.progress.current, seen.progress.total, seen.progress.message) == (
            5,
            10,
            "half",
        )
        assert seen.state == "PROGRESS"
        assert seen.result == {"at": 5}
    finally:
        step.set()
        finish.set()
    r.wait(10)
    lag_done = visible(lambda rec: rec["status"] == "SUCCESSFUL")
    assert reader.result(r.id).return_value == "end"
    for lag in (lag_running, lag_progress, lag_done):
        assert lag <= 0.3, (lag_running, lag_progress, lag_done)


def test_own_changes_are_seen_at_once_in_memory(app: nbtasks.App) -> None:
    gate = threading.Event()
    seen = threading.Event()

    @app.task
    def reporter(ctx: nbtasks.Context) -> None:
        ctx.set_metadata(step=1)
        seen.set()
        gate.wait(10)

    r = reporter.delay()
    try:
        assert seen.wait(5)
        assert app.result(r.id).status is TaskStatus.RUNNING
        assert app.result(r.id).metadata == {"step": 1}
    finally:
        gate.set()
    r.wait(10)


def test_own_finished_task_is_listed_right_after_wait(app: nbtasks.App) -> None:
    """SPEC 3: the submitting process sees its own tasks' changes at once; listings flush
    first. A large record makes the writer's commit long enough to be caught in flight."""

    @app.task
    def large() -> str:
        return "x" * 2_000_000

    missed = []
    for _ in range(10):
        r = large.delay()
        r.wait(10)
        listed = app.results(status="SUCCESSFUL", limit=1)
        if [x.id for x in listed] != [r.id]:
            missed.append(r.id)
    assert missed == []


def test_illegal_transition_through_the_store_is_refused(app: nbtasks.App) -> None:
    @app.task
    def one() -> int:
        return 1

    r = one.delay()
    r.wait(10)
    app.store.flush()
    live = records.Live(dict(committed(app, r.id)))
    with pytest.raises(IllegalTransition):
        app.store.change(live, TaskStatus.RUNNING)
    assert live.rec["status"] == "SUCCESSFUL"
    assert committed(app, r.id)["status"] == "SUCCESSFUL"
    with pytest.raises(IllegalTransition):
        app.store.cancel(live, "too late", time.time())
    with pytest.raises(IllegalTransition):
        app.store.interrupt(live, "too late", time.time())
    assert committed(app, r.id)["status"] == "SUCCESSFUL"


def _ready(task_id: str) -> records.Live:
    """A READY record of this process, built by hand (nothing will run it)."""
    now = time.time()
    return records.Live(
        {
            "id": task_id,
            "task_name": "by.hand",
            "status": "READY",
            "enqueued_at": now,
            "owner": owners.owner_token(),
        }
    )


@pytest.mark.parametrize("end", ["cancel", "interrupt"])
def test_the_store_cancels_and_interrupts_through_the_table(app: nbtasks.App, end: str) -> None:
    """``Store.cancel``/``interrupt``: the status, its state, the time and the reason, in memory
    at once and committed; waiters wake."""
    live = _ready(f"by-hand-{end}")
    app.store.create([live])
    woken: list[str] = []
    live.callbacks.append(lambda done: woken.append(done.id))
    getattr(app.store, end)(live, "because", 1234.5)
    status = "CANCELLED" if end == "cancel" else "INTERRUPTED"
    fields = {"status": status, "state": status, "finished_at": 1234.5, "reason": "because"}
    assert {k: live.rec[k] for k in fields} == fields
    assert live.wait(0) and woken == [live.id]
    app.store.flush()
    assert {k: committed(app, live.id)[k] for k in fields} == fields


def test_cancel_requests_lists_the_ids_with_a_pending_request(app: nbtasks.App) -> None:
    assert app.store.cancel_requests() == []
    app.store.request_cancel("some-task")
    assert app.store.cancel_requests() == ["some-task"]


def test_the_writer_keeps_the_wal_bounded_and_cuts_it_back_when_idle(
    app: nbtasks.App, store_path: Path
) -> None:
    """Submits never checkpoint (the writer does, at its tick): under a long delay() loop the
    WAL stays within the forced-checkpoint bound, and once the load stops it starts over and
    is cut back to 4 MB."""

    @app.task
    def f(x: int) -> int:
        return x

    wal = store_path / "cache.db-wal"
    frame = 4096 + 24
    largest = 0
    for _ in range(4):
        results = [f.delay(i) for i in range(3000)]
        assert [r.get(timeout=60) for r in results] == list(range(3000))
        largest = max(largest, wal.stat().st_size)
    assert largest <= (writer.WAL_SAFETY + 1000) * frame
    time.sleep(3 * writer.TICK)  # a tick with no commit beside it: the checkpoint completes
    f.delay(0).get(timeout=10)  # the next commit starts the WAL over, and truncates it
    wait_until(lambda: wal.stat().st_size <= (4 << 20) + 64 * frame, timeout=5)
    assert stored_count(store_path) == 12001


def test_interpreter_exit_flushes_what_is_pending(store_path: Path) -> None:
    proc = start_python(
        f"""
        import nbtasks
        app = nbtasks.App(store={str(store_path)!r})
        @app.task
        def f(ctx: nbtasks.Context):
            ctx.progress(3, 3)
            return 42
        r = f.delay()
        r.wait(10)
        print(r.id, flush=True)
        # no shutdown(): atexit must flush the final record
        """
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    tid = out.strip()
    reader = nbtasks.App(store=store_path)
    try:
        r = reader.result(tid)
        assert r.status is TaskStatus.SUCCESSFUL
        assert r.return_value == 42
        assert r.progress is not None and r.progress.current == 3
    finally:
        reader.shutdown()


# --------------------------------------------------------------------------- dead owners

_DIES = """
import os, signal, sys, threading, time
import nbtasks
app = nbtasks.App(store={store!r}, workers=1)

@app.task
def long():
    threading.Event().wait()  # until the process is killed

running = long.delay()
while app.store.read_record(running.id)["status"] != "RUNNING":  # committed RUNNING
    time.sleep(0.005)
ready = long.apply_async(countdown=600)
print(running.id, ready.id, os.getpid(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # a crash right after submit
"""


@POSIX_ONLY
def test_dead_owner_sweep_interrupts_ready_and_running(
    store_path: Path, make_app: AppFactory
) -> None:
    make_app().shutdown()  # the store exists, so an early reader can open it
    proc = start_python(_DIES.format(store=str(store_path)))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    running_id, ready_id, pid = out.split()
    reader = make_app()  # opening the store sweeps it
    result = reader.result(running_id)
    assert result.status is TaskStatus.INTERRUPTED
    assert result.is_finished and result.finished_at is not None
    assert f"pid {pid}" in (result.reason or "")
    with pytest.raises(nbtasks.TaskInterrupted, match=f"pid {pid}"):
        result.return_value  # noqa: B018
    ready = reader.result(ready_id)
    assert ready.status is TaskStatus.INTERRUPTED  # READY tasks included
    assert f"pid {pid}" in (ready.reason or "")
    # Stored, not only computed: a raw read of the records says so too.
    recs = {k[2:]: json.loads(v) for k, _, v, _ in _records(store_path) if k.startswith("t:")}
    assert recs[running_id]["status"] == recs[ready_id]["status"] == "INTERRUPTED"
    cols = _listing_columns(store_path)  # the listing columns were rewritten with the records
    for tid in (running_id, ready_id):
        assert _as_stored(cols[tid]) == _expected_columns(recs[tid])
        assert cols[tid][4] is not None  # finished_at
    assert [r.id for r in reader.results(status="INTERRUPTED")] == [ready_id, running_id]


def test_refresh_of_a_running_task_whose_owner_died(store_path: Path, make_app: AppFactory) -> None:
    reader = make_app()
    proc = start_python(
        f"""
        import os, threading, nbtasks
        app = nbtasks.App(store={str(store_path)!r})
        @app.task
        def long():
            threading.Event().wait()  # until the process is killed
        r = long.delay()
        app.store.flush()
        print(r.id, os.getpid(), flush=True)
        threading.Event().wait()
        """
    )
    try:
        assert proc.stdout is not None
        tid, pid = proc.stdout.readline().split()
        r = reader.result(tid)
        wait_until(lambda: r.refresh().status is TaskStatus.RUNNING)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert r.refresh().status is TaskStatus.INTERRUPTED
    assert f"pid {pid}" in (r.reason or "")
    with pytest.raises(nbtasks.TaskInterrupted):
        r.get(5)


def test_live_owners_are_not_swept(make_app: AppFactory) -> None:
    a = make_app()
    gate = threading.Event()

    @a.task
    def blocked() -> int:
        gate.wait(10)
        return 1

    r = blocked.delay()
    try:
        b = make_app()  # opening sweeps: this process is alive, nothing is touched
        assert b.result(r.id).status in (TaskStatus.READY, TaskStatus.RUNNING)
    finally:
        gate.set()
    assert r.get(10) == 1


def test_owner_tokens() -> None:
    me = owners.owner_token()
    assert owners.owner_alive(me)
    assert owners.owner_pid(me) == os.getpid()
    assert not owners.owner_alive(None)
    assert not owners.owner_alive("garbage")
    # Same pid, another start time: the pid was reused, the owner is gone.
    host, pid, start = me.rsplit(":", 2)
    assert not owners.owner_alive(f"{host}:{pid}:{int(start) + 1}")
    # Another host: cannot tell, assume alive.
    assert owners.owner_alive(f"elsewhere:{pid}:1")


def test_process_identity_on_each_path() -> None:
    """pid_alive and start times (store.identity): /proc here, ps as on macOS; a start time read
    another way than this system's, or not at all, means "trust the pid", never "dead"."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # reaped: its pid is free
    me, host = os.getpid(), owners.HOST
    assert identity.pid_alive(me) and not identity.pid_alive(ended.pid)
    assert not identity.pid_alive(0) and not identity.pid_alive(-1)
    assert identity.process_start_time(ended.pid) is None
    linux_start = identity.process_start_time(me)
    assert linux_start is not None and linux_start.isdigit()  # the format earlier stores hold
    ps_start = identity.ps_start_time(me)
    assert ps_start is not None and ps_start.startswith("s")
    assert identity.ps_start_time(ended.pid) is None
    # A token from this version on Linux keeps its meaning; ps's tokens are compared by ps.
    assert owners.owner_alive(f"{host}:{me}:{linux_start}")
    assert owners.owner_alive(f"{host}:{me}:{ps_start}")
    assert not owners.owner_alive(f"{host}:{me}:s{int(ps_start[1:]) - 3600}")
    # Windows' creation time cannot be read here, nor an unknown clock: the live pid decides.
    assert owners.owner_alive(f"{host}:{me}:w133")
    assert owners.owner_alive(f"{host}:{me}:?")
    assert not owners.owner_alive(f"{host}:{ended.pid}:w133")
    assert not owners.owner_alive(f"{host}:{ended.pid}:?")


def test_a_zombie_owner_is_gone() -> None:
    """A process that has ended but is not reaped yet (a zombie) is not alive."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    token = owners.owner_token(child.pid)
    wait_until(lambda: not identity.pid_alive(child.pid))  # ended, not reaped: still a pid
    assert not owners.owner_alive(token)
    child.wait()


# --------------------------------------------------------------------------- many writers

_WRITER = """
import sys, nbtasks
app = nbtasks.App(store={store!r}, workers=2)

@app.task
def work(ctx: nbtasks.Context, i: int, who: str) -> str:
    ctx.set_metadata(who=who, i=i)
    ctx.progress(i, {n})
    return f"{{who}}-{{i}}"

g = work.starmap([(i, {who!r}) for i in range({n})])
assert g.get(60) == [f"{who}-{{i}}" for i in range({n})]
print(g.id, flush=True)
app.shutdown()
"""


def test_several_apps_and_processes_write_one_store_losing_nothing(
    store_path: Path, make_app: AppFactory
) -> None:
    n = 100
    make_app().shutdown()
    procs = [start_python(_WRITER.format(store=str(store_path), n=n, who=f"p{k}")) for k in (1, 2)]
    apps = [make_app(workers=2) for _ in range(2)]
    groups = []
    for k, a in enumerate(apps):

        @a.task(name="work")
        def work(ctx: nbtasks.Context, i: int, who: str) -> str:
            ctx.set_metadata(who=who, i=i)
            ctx.progress(i, n)
            return f"{who}-{i}"

        groups.append((f"a{k}", work.starmap([(i, f"a{k}") for i in range(n)])))
    for who, g in groups:
        assert g.get(60) == [f"{who}-{i}" for i in range(n)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    for a in apps:
        a.shutdown()
    assert stored_count(store_path) == 4 * n
    reader = make_app()
    results = reader.results(task_name="work")
    assert len(results) == 4 * n
    assert all(r.status is TaskStatus.SUCCESSFUL for r in results)
    seen = {(r.metadata["who"], r.metadata["i"]) for r in results}
    assert seen == {(w, i) for w in ("p1", "p2", "a0", "a1") for i in range(n)}
    for r in results:
        assert r.return_value == f"{r.metadata['who']}-{r.metadata['i']}"
        assert r.progress is not None and r.progress.current == r.metadata["i"]


def test_cancel_request_from_another_process_is_acted_on_by_the_owner(
    store_path: Path, make_app: AppFactory
) -> None:
    make_app().shutdown()
    proc = start_python(
        f"""
        import time, nbtasks
        app = nbtasks.App(store={str(store_path)!r})
        @app.task
        def spin(ctx: nbtasks.Context):
            while True:  # busy until cancelled, reporting
                ctx.progress(1)
        r = spin.delay()
        app.store.flush()
        print(r.id, flush=True)
        r.wait(30)
        print(r.status.value, flush=True)
        app.shutdown()
        """
    )
    try:
        assert proc.stdout is not None
        tid = proc.stdout.readline().strip()
        reader = make_app()
        r = reader.result(tid)
        wait_until(lambda: r.refresh().status is TaskStatus.RUNNING)
        assert r.cancel() is True
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert out.strip() == "CANCELLED", err
    assert r.wait(10).status is TaskStatus.CANCELLED
    assert "x:" + tid not in {k for k, *_ in _records(store_path)}  # the request was consumed


# --------------------------------------------------------------------------- layout


def test_diskcache_layout(app: nbtasks.App, store_path: Path) -> None:
    """The store reads diskcache's private ``Cache`` table (key, tag, value, mode, filename)
    with SQL for its indexed queries: fail loudly if a diskcache release changes it."""
    assert diskcache.__version__.startswith("5.6.")
    cache = app.store.cache
    cols = {row[1]: row[2] for row in cache._sql("PRAGMA table_info(Cache)").fetchall()}
    for name in ("rowid", "key", "raw", "tag", "value", "mode", "filename", "store_time"):
        assert name in cols, name
    indexes = {row[1]: row for row in cache._sql("PRAGMA index_list(Cache)").fetchall()}
    assert "Cache_key_raw" in indexes and indexes["Cache_key_raw"][2] == 1  # unique
    assert "Cache_tag_rowid" in indexes  # tag_index=True: status queries use it
    tag_cols = [r[2] for r in cache._sql("PRAGMA index_info(Cache_tag_rowid)").fetchall()]
    assert tag_cols == ["tag", "rowid"]
    assert cache._sql("SELECT value FROM Settings WHERE key = 'tag_index'").fetchone()[0] == 1

    @app.task
    def two(x: int) -> tuple[int, int]:
        return (x, x)

    @app.task
    def bad() -> None:
        raise ValueError("no")

    ok = two.delay(1)
    failed = bad.delay()
    ok.wait(10)
    failed.wait(10)
    app.store.flush()
    rows = _records(store_path)
    by_key = {k: (tag, value, mode) for k, tag, value, mode in rows}
    for r, status in ((ok, "SUCCESSFUL"), (failed, "FAILED")):
        tag, value, mode = by_key["t:" + r.id]
        assert tag == status  # the status is the tag
        assert mode == diskcache.core.MODE_RAW and isinstance(value, str)  # JSON text
        assert json.loads(value)["status"] == status
    assert all(mode != diskcache.core.MODE_PICKLE for _, _, _, mode in rows)
    # The queries built on it.
    assert app.store.count() == 2
    assert app.store.count(status="FAILED") == 1
    assert [s["id"] for s in app.store.summaries()] == [failed.id, ok.id]


def _listing_columns(path: Path) -> dict[str, tuple[Any, ...]]:
    """Task id -> (status tag, name, enqueued, started, finished, progress) as stored in the
    listing columns, read with plain sqlite; and the records beside them."""
    import sqlite3

    con = sqlite3.connect(path / "cache.db")
    try:
        rows = con.execute(
            "SELECT key, tag, nb_name, nb_enqueued, nb_started, nb_finished, nb_progress"
            " FROM Cache WHERE key >= 't:' AND key < 't;'"
        ).fetchall()
    finally:
        con.close()
    return {key[2:]: tuple(rest) for key, *rest in rows}


def _expected_columns(rec: dict[str, Any]) -> tuple[Any, ...]:
    prog = rec.get("progress")
    return (
        rec["status"],
        rec["task_name"],
        rec["enqueued_at"],
        rec.get("started_at"),
        rec.get("finished_at"),
        None if prog is None else prog,
    )


def _as_stored(cols: tuple[Any, ...]) -> tuple[Any, ...]:
    *rest, prog = cols
    return (*rest, None if prog is None else json.loads(prog))


def test_listing_columns_mirror_every_record(app: nbtasks.App, store_path: Path) -> None:
    """Listings read name, times and progress from nbtasks' columns, not the JSON: they must
    say what the record says after every kind of write (submit, progress, end, failure)."""
    gate = threading.Event()

    @app.task(name="cols.step")
    def step(ctx: nbtasks.Context, n: int) -> int:
        ctx.progress(n, total=10, message=f"at {n}")
        gate.wait(10)
        return n

    @app.task(name="cols.bad")
    def bad() -> None:
        raise ValueError("no")

    running = step.delay(3)
    wait_until(lambda: committed(app, running.id).get("progress") is not None)
    failed = bad.delay()
    failed.wait(10)
    app.store.flush()
    cols = _listing_columns(store_path)
    for r in (running, failed):
        assert _as_stored(cols[r.id]) == _expected_columns(committed(app, r.id))
    assert _as_stored(cols[running.id])[5] == [3, 10, "at 3", None]
    assert cols[running.id][4] is None  # not finished yet
    gate.set()
    running.wait(10)
    app.store.flush()
    cols = _listing_columns(store_path)
    done = committed(app, running.id)
    assert _as_stored(cols[running.id]) == _expected_columns(done)
    assert cols[running.id][:2] == ("SUCCESSFUL", "cols.step") and cols[running.id][4] > 0
    # What the public listing shows comes from there.
    (listed,) = app.results(task_name="cols.step")
    assert listed.status is TaskStatus.SUCCESSFUL and listed.progress is not None
    assert listed.finished_at is not None
    assert listed.finished_at.timestamp() == pytest.approx(done["finished_at"])


def test_a_schema_1_store_gains_the_listing_columns_when_opened(
    store_path: Path, make_app: AppFactory
) -> None:
    """A store written before the listing columns existed (schema 1): opening it adds them,
    fills them from the records, and marks it schema 2; nothing is lost."""
    import sqlite3

    old = make_app()

    @old.task(name="old.square")
    def square(ctx: nbtasks.Context, x: int) -> int:
        ctx.progress(x, total=x)
        return x * x

    ids = [r.id for r in square.map(range(1, 6)).wait(10)]
    old.shutdown()
    con = sqlite3.connect(store_path / "cache.db")
    with con:
        con.execute("DROP INDEX nb_listing")  # schema 1 had neither the columns nor it
        for name, _ in opening.SUMMARY_COLUMNS:
            con.execute(f"ALTER TABLE Cache DROP COLUMN {name}")
        con.execute("UPDATE Cache SET value = 1 WHERE key = 'nbtasks:schema'")
    con.close()

    app = make_app()
    assert app.store.cache.get("nbtasks:schema") == opening.SCHEMA == 2
    cols = _listing_columns(store_path)
    for tid in ids:
        assert _as_stored(cols[tid]) == _expected_columns(committed(app, tid))
    listed = app.results(task_name="old.square")
    assert sorted(r.id for r in listed) == sorted(ids)
    assert sorted(r.get() for r in listed) == [1, 4, 9, 16, 25]
    assert all(r.progress is not None and r.progress.fraction == 1.0 for r in listed)


def _expire_index(store_path: Path) -> str:
    import sqlite3

    con = sqlite3.connect(store_path / "cache.db")
    try:
        row = con.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'Cache_expire_time'"
        ).fetchone()
    finally:
        con.close()
    assert row is not None
    return str(row[0])


def test_the_expiry_index_holds_only_rows_that_expire(
    store_path: Path, make_app: AppFactory
) -> None:
    """nbtasks never sets an expiry: diskcache's index of expiry times is partial, so a commit
    writes no page of it; a store with diskcache's full index gets the partial one when opened
    (nothing lost), and diskcache's own expiry still finds what does expire."""
    import sqlite3

    app = make_app()
    assert _expire_index(store_path).endswith("WHERE expire_time IS NOT NULL")

    @app.task(name="expiry.double")
    def double(x: int) -> int:
        return 2 * x

    ids = [r.id for r in double.map(range(5)).wait(10)]
    app.shutdown()
    con = sqlite3.connect(store_path / "cache.db")
    with con:
        con.execute("DROP INDEX Cache_expire_time")
        con.execute("CREATE INDEX Cache_expire_time ON Cache (expire_time)")  # diskcache's
    con.close()

    again = make_app()
    assert _expire_index(store_path).endswith("WHERE expire_time IS NOT NULL")
    assert sorted(again.result(i).get() for i in ids) == [0, 2, 4, 6, 8]
    cache = again.store.cache
    set_at = time.time()
    cache.set("side", "gone soon", expire=0.01)
    wait_until(lambda: time.time() > set_at + 0.02)  # the clock has passed its expiry
    assert cache.expire() == 1 and "side" not in cache
    assert len(again.results(task_name="expiry.double")) == 5


def _listing_plan(store_path: Path, app: nbtasks.App) -> str:
    import sqlite3

    sql, params = queries.select(records.LISTING_SQL, None, None)
    con = sqlite3.connect(store_path / "cache.db")
    try:
        return " ".join(r[3] for r in con.execute("EXPLAIN QUERY PLAN " + sql, params))
    finally:
        con.close()


def test_the_listing_reads_a_covering_index_of_the_task_rows(
    store_path: Path, make_app: AppFactory
) -> None:
    """The summary of every task is read from an index of the listing's columns, not from the
    table's rows (which hold whole records); a store of an older nbtasks, without the index,
    gets it when opened, and the listing then reads the same as before."""
    import sqlite3

    app = make_app()

    @app.task(name="listing.square", bind=True)
    def square(self: nbtasks.Context, x: int) -> int:
        self.progress(x, 4)
        return x * x

    square.map(range(5)).wait(10)
    assert "COVERING INDEX nb_listing" in _listing_plan(store_path, app)
    before = [(r.id, r.status, r.task_name, r.finished_at, r.progress) for r in app.results()]
    app.shutdown()
    con = sqlite3.connect(store_path / "cache.db")
    with con:
        con.execute("DROP INDEX nb_listing")
    con.close()
    assert "nb_listing" not in _listing_plan(store_path, app)

    again = make_app()
    assert "COVERING INDEX nb_listing" in _listing_plan(store_path, again)
    after = [(r.id, r.status, r.task_name, r.finished_at, r.progress) for r in again.results()]
    assert after == before and len(after) == 5
    assert [p.current for *_, p in after if p is not None] == [4, 3, 2, 1, 0]


def test_layout_check_fails_loudly_when_a_column_is_missing() -> None:
    class Rows:
        def fetchall(self) -> list[tuple[int, str]]:
            return [(0, "rowid"), (1, "key"), (2, "raw"), (3, "value")]

    class FakeCache:
        def _sql(self, sql: str) -> Rows:
            return Rows()

    with pytest.raises(nbtasks.StoreError, match=r"diskcache>=5\.6,<5\.7"):
        opening._check_private_layout(FakeCache())  # type: ignore[arg-type]


def test_the_store_never_lets_diskcache_pickle(app: nbtasks.App) -> None:
    with pytest.raises(TypeError, match="JSON text and signed bytes"):
        app.store.cache.set("oops", {"a": "dict"})
    # An entry pickled by plain diskcache is refused on read, never unpickled.
    with diskcache.Cache(str(app.store.path)) as raw:
        raw.set("t:planted", {"evil": "pickle"})
    with pytest.raises(nbtasks.StoreError, match="pickled entry"):
        app.store.read_record("planted")


def test_new_ids_are_time_ordered_and_unique() -> None:
    ids = [records.new_id() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 36 and i[14] == "7" for i in ids)


# --------------------------------------------------------------------------- trust


def test_values_signed_by_another_key_are_untrusted_but_listing_works(
    store_path: Path, make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = make_app()

    @a.task
    def pair(x: Any) -> tuple[Any, Any]:
        return (x, x)

    r = pair.delay((1, 2))  # a tuple argument and result: both signed pickles
    assert r.get(10) == ((1, 2), (1, 2))
    a.shutdown()

    monkeypatch.setenv("NBTASKS_KEY", "a colleague's key, at least 32 bytes long")
    b = make_app()
    listed = b.results()  # listing reads JSON only: nothing to verify
    assert [x.id for x in listed] == [r.id]
    assert listed[0].status is TaskStatus.SUCCESSFUL
    assert listed[0].task_name == pair.name
    other = b.result(r.id)
    with pytest.raises(nbtasks.UntrustedValue) as info:
        other.return_value  # noqa: B018
    assert str(store_path) in str(info.value) and "trust=True" in str(info.value)
    with pytest.raises(nbtasks.UntrustedValue):
        other.args  # noqa: B018
    trusted = make_app(trust=True)
    assert trusted.result(r.id).return_value == ((1, 2), (1, 2))
    assert trusted.result(r.id).args == [(1, 2)]


def test_purge_deletes_records_and_their_values(app: nbtasks.App, store_path: Path) -> None:
    @app.task
    def big(blob: bytes) -> bytes:
        return blob * 2

    r = big.delay(b"q" * 40_000)
    assert len(r.get(10)) == 80_000
    want = {f"t:{r.id}", f"v:{r.id}:args", f"v:{r.id}:rv"}
    wait_until(lambda: want <= {k for k, *_ in _records(store_path)})  # see the flush test
    assert app.purge() == 1
    keys = {k for k, *_ in _records(store_path)}
    assert not {k for k in keys if r.id in k}
    with pytest.raises(nbtasks.UnknownTaskId):
        app.result(r.id)


# --------------------------------------------------------------------------- where the store is


def test_store_defaults_to_nbtasks_store_then_dot_nbtasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBTASKS_STORE", str(tmp_path / "from-env"))
    with nbtasks.App() as a:
        assert a.store.path == tmp_path / "from-env"
    monkeypatch.delenv("NBTASKS_STORE")
    monkeypatch.chdir(tmp_path)
    with nbtasks.App() as b:
        assert b.store.path == tmp_path / ".nbtasks"
    assert (tmp_path / ".nbtasks" / "cache.db").exists()


def test_a_side_entry_stays_staged_while_it_is_committed(
    app: nbtasks.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader finds a side entry (a cache key a released chain link puts, a value) either
    staged or committed, never in neither place: while the writer writes it, it is still
    staged. (A chain submitted again right after the first ended missed its cached link.)"""
    store = app.store
    seen: list[tuple[str, Any]] = []
    real_set = store.cache.set

    def spy(key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((key, store.writer.staged(key)))
        return real_set(key, value, *args, **kwargs)

    monkeypatch.setattr(store.cache, "set", spy)
    store.put_extra("k:abc", "some-task-id")
    assert store.find_cached(["abc"]) == {"abc": "some-task-id"}  # staged
    store.flush()
    assert ("k:abc", "some-task-id") in seen  # still staged while it was written
    monkeypatch.undo()
    assert store.writer.staged("k:abc") is writer.MISSING  # committed: read from the store
    assert store.find_cached(["abc"]) == {"abc": "some-task-id"}
