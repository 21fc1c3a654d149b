"""SPEC §10, "a store is data, never instructions": each finding of issue 13 as an attack that
fails, against a real store on disk, real SQLite connections and real processes.

The attacker can write files where a store is (a shared directory, a repository that holds a
``.nbtasks``, a colleague's store, a planted link). Each test plants what the attacker would,
uses the store as a user would (``App()``, ``nbtasks list/show/purge``, submitting, purging),
and checks that the victim (a file outside the store, another database, the user's key) is
untouched, and that the worst outcome is a ``StoreError`` naming the store and what is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import POSIX_ONLY, REPO, ready_task_of_a_dead_process, start_python, wait_until

import nbtasks
from nbtasks._codec import cache_key
from nbtasks.store import SCHEMA

AppFactory = Callable[..., nbtasks.App]
NOBODY = 65534
HEX28 = "0123456789abcdef0123456789ab"


# --------------------------------------------------------------------------- helpers


def _exec(store: Path, statement: str, params: tuple[Any, ...] = ()) -> None:
    """Edit the store's database behind nbtasks' back, as an attacker with write access would."""
    con = sqlite3.connect(store / "cache.db", timeout=10)
    try:
        with con:
            con.execute(statement, params)
    finally:
        con.close()


def _plant_row(
    store: Path,
    key: str,
    *,
    value: Any = None,
    filename: str | None = None,
    mode: int = 1,
    tag: str | None = None,
    expire: float | None = None,
    name: str | None = None,
) -> None:
    """A row of diskcache's table, written with plain SQLite."""
    now = time.time()
    _exec(
        store,
        "INSERT OR REPLACE INTO Cache(key, raw, store_time, expire_time, access_time,"
        " access_count, tag, size, mode, filename, value, nb_name)"
        " VALUES (?, 1, ?, ?, ?, 0, ?, 0, ?, ?, ?, ?)",
        (key, now, expire, now, tag, mode, filename, value, name),
    )


def _nbtasks(*argv: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """The ``nbtasks`` command as a user runs it (a hang fails the test at ``timeout``)."""
    return subprocess.run(
        [sys.executable, "-m", "nbtasks", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO),
        check=False,
        **kwargs,
    )


def _outcome(call: Callable[[], Any], what: str) -> Any:
    """Run ``call`` in a thread and return what it returned or raised; fail if it has not
    ended within 30 s (what a user would call a hang)."""
    box: list[Any] = []
    done = threading.Event()

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:
            box.append(exc)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(30), f"{what} waited without bound"
    return box[0]


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` and its bytes (SQLite's -wal/-shm left out: a reader
    of a WAL database may create them)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and not p.name.startswith("cache.db-")
    }


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file of the user's outside the store, that no use of the store may touch."""
    path = tmp_path / "notes.txt"
    path.write_text("my notes\n")
    return path


@pytest.fixture
def finished(make_app: AppFactory, store_path: Path) -> dict[str, str]:
    """A store holding a few finished tasks (one with a large return value in its own file),
    its App shut down: ids by name."""
    a = make_app()

    @a.task(name="small")
    def small(x: int) -> int:
        return x

    @a.task(name="large")
    def large() -> bytes:
        return b"x" * 200_000

    ids = {"small": small.delay(1).id, "large": large.delay().id}
    for tid in ids.values():
        a.result(tid).wait(10)
    a.shutdown()
    return ids


def _value_file(store: Path, task_id: str) -> Path:
    con = sqlite3.connect(store / "cache.db")
    try:
        (filename,) = con.execute(
            "SELECT filename FROM Cache WHERE key = ?", (f"v:{task_id}:rv",)
        ).fetchone()
    finally:
        con.close()
    return store / filename


# --------------------------------------------------------------------------- 1. deleting files


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "dotdot"])
def test_a_schema_row_naming_a_file_outside_never_deletes_it(
    finished: dict[str, str], store_path: Path, make_app: AppFactory, victim: Path, relative: bool
) -> None:
    """The attack: the schema row names the victim as its value file; opening upgraded the
    layout with ``cache.set``, which removed the old row's file."""
    name = os.path.relpath(victim, store_path) if relative else str(victim)
    _exec(
        store_path,
        "UPDATE Cache SET mode = 2, filename = ?, value = NULL WHERE key = 'nbtasks:schema'",
        (name,),
    )
    listed = _nbtasks("list", "--store", str(store_path))
    assert listed.returncode == 2
    assert "schema key that nbtasks did not write" in listed.stderr
    assert str(store_path) in listed.stderr
    with pytest.raises(nbtasks.StoreError, match="schema key that nbtasks did not write"):
        make_app()
    purged = _nbtasks("purge", "--store", str(store_path))
    assert purged.returncode == 2
    assert victim.read_text() == "my notes\n"


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "dotdot"])
def test_expired_junk_rows_and_cache_keys_never_delete_outside(
    store_path: Path, make_app: AppFactory, victim: Path, relative: bool
) -> None:
    """In a store you own: an expired row naming the victim (diskcache culls expired rows at
    every ``set``), and a row planted under the very cache key a ``cache=True`` submit writes
    (``set`` removes the old row's file)."""
    app = make_app()

    @app.task(cache=True)
    def f(x: int) -> int:
        return x * 2

    name = os.path.relpath(victim, store_path) if relative else str(victim)
    _plant_row(store_path, "junk", mode=2, filename=name, expire=1.0)
    _plant_row(store_path, "k:" + cache_key(f.name, f.code_hash, (3,), {}), mode=2, filename=name)
    assert f.delay(3).get(10) == 6
    assert f.map(range(5)).get(10) == [0, 2, 4, 6, 8]
    assert app.purge() == 6
    app.store.vacuum(orphan_age=0)
    assert victim.read_text() == "my notes\n"


def test_purge_never_deletes_a_value_file_named_outside(
    finished: dict[str, str], store_path: Path, make_app: AppFactory, victim: Path
) -> None:
    for what in ("rv", "args", "exc"):
        _plant_row(store_path, f"v:{finished['small']}:{what}", mode=2, filename=str(victim))
    purged = _nbtasks("purge", "--store", str(store_path))
    assert purged.returncode == 0, purged.stderr
    assert "purged 2 finished task(s)" in purged.stdout
    assert victim.read_text() == "my notes\n"
    con = sqlite3.connect(store_path / "cache.db")
    left = [k for (k,) in con.execute("SELECT key FROM Cache WHERE key >= 'v:' AND key < 'v;'")]
    con.close()
    assert left == []  # the rows are gone; the file they named was not theirs to delete


# --------------------------------------------------------------------------- 3. planted links


@POSIX_ONLY
@pytest.mark.parametrize("name", [".lock", "cache.db-wal", "cache.db-shm", "nbtasks-store.json"])
def test_a_link_planted_among_the_store_files_is_refused(
    finished: dict[str, str], store_path: Path, victim: Path, name: str
) -> None:
    """Aimed at the key file, the lock's ``O_CREAT`` open replaced the key with a timestamp."""
    link = store_path / name
    link.unlink(missing_ok=True)
    link.symlink_to(victim)
    with pytest.raises(nbtasks.StoreError) as info:
        nbtasks.App(store=store_path)
    assert str(link) in str(info.value) and "symbolic link" in str(info.value)
    listed = _nbtasks("list", "--store", str(store_path))
    assert listed.returncode == 2 and "symbolic link" in listed.stderr
    assert victim.read_text() == "my notes\n"
    assert link.is_symlink()


@POSIX_ONLY
def test_a_new_store_never_writes_through_an_old_temp_file_link(
    store_path: Path, make_app: AppFactory, victim: Path
) -> None:
    """The marker used to be written through ``nbtasks-store.tmp`` opened with ``O_TRUNC``: a
    link planted there in a cloned repository's ``.nbtasks`` overwrote its target."""
    store_path.mkdir(mode=0o700)
    (store_path / "nbtasks-store.tmp").symlink_to(victim)
    app = make_app()

    @app.task
    def one() -> int:
        return 1

    assert one.delay().get(10) == 1
    assert victim.read_text() == "my notes\n"
    assert json.loads((store_path / "nbtasks-store.json").read_text())["schema"] == SCHEMA


@POSIX_ONLY
def test_a_store_directory_that_is_a_link_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "store"
    link.symlink_to(target)
    with pytest.raises(nbtasks.StoreError) as info:
        nbtasks.App(store=link)
    assert "symbolic link" in str(info.value) and str(target) in str(info.value)
    assert list(target.iterdir()) == []  # nothing was created through the link


@POSIX_ONLY
def test_a_value_directory_that_is_a_link_is_never_followed(
    finished: dict[str, str], store_path: Path, make_app: AppFactory, tmp_path: Path
) -> None:
    """A row names ``ab/cd/<28 hex>.val`` and ``ab`` is a link to a directory of the user's
    holding ``cd/<28 hex>.val``: neither reading nor purging reaches it."""
    outside = tmp_path / "projects"
    (outside / "cd").mkdir(parents=True)
    precious = outside / "cd" / f"{HEX28}.val"
    precious.write_bytes(b"precious")
    (store_path / "ab").symlink_to(outside)
    tid = finished["large"]
    _exec(
        store_path,
        "UPDATE Cache SET filename = ? WHERE key = ?",
        (f"ab/cd/{HEX28}.val", f"v:{tid}:rv"),
    )
    app = make_app()
    with pytest.raises(nbtasks.StoreError, match="symbolic link"):
        app.result(tid).return_value  # noqa: B018
    assert app.purge() == 2
    app.store.vacuum(orphan_age=0)
    assert precious.read_bytes() == b"precious"


# --------------------------------------------------------------------------- 4. Settings


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("_directory", "OTHER"),  # every other thread's connection went to another database
        ("sqlite_query_only", 1),  # the store became read-only
        ("sqlite_synchronous", 1.5),  # a float crashed every commit
        ("eviction_policy", "least-recently-used; DROP TABLE Cache"),
        ("size_limit", "1"),
    ],
)
def test_settings_rows_that_diskcache_would_act_on_are_refused(
    finished: dict[str, str], store_path: Path, tmp_path: Path, key: str, value: Any
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    if value == "OTHER":
        value = str(other)
    _exec(store_path, "INSERT OR REPLACE INTO Settings VALUES (?, ?)", (key, value))
    before = _snapshot(store_path)
    with pytest.raises(nbtasks.StoreError) as info:
        nbtasks.App(store=store_path)
    assert repr(key) in str(info.value) and str(store_path) in str(info.value)
    assert list(other.iterdir()) == []  # no database was made anywhere else
    after = _snapshot(store_path)
    assert after.pop(".lock").strip() == str(os.getpid()).encode()
    before.pop(".lock")
    assert after == before  # refused before diskcache wrote anything


def test_settings_that_diskcache_knows_never_change_nbtasks_connections(
    finished: dict[str, str], store_path: Path, make_app: AppFactory
) -> None:
    """A known setting with another value, and a pragma row added while the store is open (new
    connections re-read the table): every connection keeps nbtasks' own settings."""
    _exec(store_path, "UPDATE Settings SET value = 0 WHERE key = 'sqlite_synchronous'")
    _exec(store_path, "UPDATE Settings SET value = 'delete' WHERE key = 'sqlite_journal_mode'")
    app = make_app()
    _exec(store_path, "INSERT INTO Settings VALUES ('sqlite_query_only', 1)")

    @app.task
    def double(x: int) -> int:
        return 2 * x

    seen: dict[str, Any] = {}

    def in_a_new_thread() -> None:  # its own diskcache connection, made now
        con = app.store.cache._con
        seen["sync"] = con.execute("PRAGMA synchronous").fetchone()[0]
        seen["query_only"] = con.execute("PRAGMA query_only").fetchone()[0]
        seen["map"] = double.map(range(3)).get(10)  # a map commits on this connection

    t = threading.Thread(target=in_a_new_thread)
    t.start()
    t.join(30)
    assert seen == {"sync": 1, "query_only": 0, "map": [0, 2, 4]}
    with app.store.writer.lock:  # the writer thread uses this connection too
        con = app.store.writer.connection()
        assert con.execute("PRAGMA synchronous").fetchone()[0] == 1
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA query_only").fetchone()[0] == 0
    assert double.delay(5).get(10) == 10


def test_a_trigger_planted_in_the_database_is_refused(
    finished: dict[str, str], store_path: Path
) -> None:
    _exec(
        store_path,
        "CREATE TRIGGER steal AFTER INSERT ON Cache BEGIN"
        " UPDATE Cache SET filename = '../../notes.txt' WHERE rowid = NEW.rowid; END",
    )
    with pytest.raises(nbtasks.StoreError, match="trigger 'steal'"):
        nbtasks.App(store=store_path)
    listed = _nbtasks("list", "--store", str(store_path))
    assert listed.returncode == 2 and "trigger 'steal'" in listed.stderr


# --------------------------------------------------------------------------- 5. bounded waits


def _hold(code: str) -> Iterator[subprocess.Popen[str]]:
    """A process that takes something, says ``held``, and lets go when its stdin closes."""
    proc = start_python(code, stdin=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "held", proc.stderr.read() if proc.stderr else line
        yield proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(30)


def test_a_lock_held_elsewhere_gives_up_and_names_its_holder(
    finished: dict[str, str], store_path: Path
) -> None:
    holder = _hold(
        f"""
        import sys
        from pathlib import Path
        from nbtasks.store.files import StoreLock
        with StoreLock(Path({str(store_path)!r}), 10):
            print("held", flush=True)
            sys.stdin.read()
        """
    )
    proc = next(holder)
    exc = _outcome(lambda: nbtasks.App(store=store_path, lock_timeout=0.3), "App()")
    holder.close()
    assert isinstance(exc, nbtasks.StoreError)
    assert "is locked" in str(exc) and f"by pid {proc.pid}" in str(exc)
    assert "lock_timeout" in str(exc)
    nbtasks.App(store=store_path).shutdown()  # released: it opens


def test_a_write_transaction_held_elsewhere_fails_submits_in_time_and_stalls_no_task(
    store_path: Path, make_app: AppFactory
) -> None:
    app = make_app(lock_timeout=0.5)
    go = threading.Event()

    @app.task
    def busy(ctx: nbtasks.Context) -> str:
        i = 0
        while not go.is_set():
            i += 1
            ctx.progress(i)
        return "done"

    @app.task
    def plain(x: int) -> int:
        return x

    @app.task(cache=True)
    def cached(x: int) -> int:
        return x

    running = busy.delay()
    try:
        _locked_store_refuses_submits(store_path, running, plain, cached)
    finally:
        go.set()  # the task ends, whatever happened above
    assert running.get(10) == "done"
    app.store.flush()
    reader = make_app()
    wait_until(lambda: reader.result(running.id).status == nbtasks.TaskStatus.SUCCESSFUL)
    assert len(reader.results()) == 1  # the refused submits stored nothing


def _locked_store_refuses_submits(
    store_path: Path, running: nbtasks.TaskResult, plain: Any, cached: Any
) -> None:
    # (a handle's fields are a snapshot until refresh(): issue 14 makes them current)
    wait_until(lambda: running.refresh().progress is not None)
    holder = _hold(
        f"""
        import sqlite3, sys
        con = sqlite3.connect({str(store_path / "cache.db")!r}, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        print("held", flush=True)
        sys.stdin.read()
        con.execute("ROLLBACK")
        """
    )
    next(holder)
    before = running.refresh().progress.current  # type: ignore[union-attr]
    for submit in (lambda: plain.delay(1), lambda: plain.map([1, 2]), lambda: cached.delay(1)):
        exc = _outcome(submit, "a submit to the locked store")
        assert isinstance(exc, nbtasks.StoreError), exc
        assert "locked" in str(exc) and str(store_path) in str(exc)
    # Two at once: the second waits for the first's commit, then only what is left for SQLite.
    box: list[Any] = []
    calls = (lambda: plain.delay(1), lambda: plain.map([3, 4]))
    both = [threading.Thread(target=lambda c=c: box.append(_outcome(c, "a submit"))) for c in calls]
    for t in both:
        t.start()
    for t in both:
        t.join(60)
    assert len(box) == 2, box
    assert all(isinstance(e, nbtasks.StoreError) and "locked" in str(e) for e in box), box
    # Meanwhile the running task went on, and this process saw its progress.
    progress = running.refresh().progress
    assert progress is not None and progress.current > before
    holder.close()


# --------------------------------------------------------------------------- 6. damaged records


def test_a_damaged_record_lists_as_damaged_and_fails_alone(
    finished: dict[str, str], store_path: Path, make_app: AppFactory
) -> None:
    _plant_row(store_path, "t:0-not-json", value="{not json", tag="READY", name="x")
    _plant_row(store_path, "t:1-bad-status", value="{}", tag="EVIL", name="y")
    app = make_app()  # the sweep at open skips what it cannot read
    listed = _nbtasks("list", "--store", str(store_path))
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()[1:-1]}
    assert "DAMAGED" in lines["0-not-json"] and "DAMAGED" in lines["1-bad-status"]
    assert "SUCCESSFUL" in lines[finished["small"]]
    assert "(4 of 4 task(s)" in listed.stdout
    with pytest.raises(nbtasks.StoreError, match=r"t:0-not-json .* is damaged"):
        app.result("0-not-json")
    statuses = {}
    for r in app.results():
        try:
            statuses[r.id] = r.status
        except nbtasks.StoreError as exc:
            statuses[r.id] = str(exc)
    assert statuses[finished["small"]] == nbtasks.TaskStatus.SUCCESSFUL
    assert "damaged" in statuses["1-bad-status"]
    assert app.result(finished["small"]).return_value == 1
    shown = _nbtasks("show", "0-not-json", "--store", str(store_path))
    assert shown.returncode == 2 and "is damaged" in shown.stderr


@POSIX_ONLY
def test_a_fifo_in_place_of_a_value_file_never_blocks_a_reader(
    finished: dict[str, str], store_path: Path, make_app: AppFactory
) -> None:
    tid = finished["large"]
    path = _value_file(store_path, tid)
    path.unlink()
    os.mkfifo(path, 0o600)
    # The task's record too: moved to a file (as diskcache keeps large text) that is a FIFO.
    fifo_name = f"ef/01/{HEX28}.val"
    (store_path / "ef" / "01").mkdir(parents=True, mode=0o700)
    os.mkfifo(store_path / fifo_name, 0o600)
    small = finished["small"]
    _exec(
        store_path,
        "UPDATE Cache SET mode = 3, filename = ?, value = NULL WHERE key = ?",
        (fifo_name, "t:" + small),
    )
    shown = _nbtasks("show", small, "--store", str(store_path))
    assert shown.returncode == 2 and "a FIFO" in shown.stderr
    app = make_app()
    r = app.result(tid)
    assert r.status == nbtasks.TaskStatus.SUCCESSFUL
    with pytest.raises(nbtasks.StoreError, match="is a FIFO, not a value file"):
        r.return_value  # noqa: B018
    with pytest.raises(nbtasks.StoreError, match="a FIFO"):
        app.result(small)


# --------------------------------------------------------------------------- 7. read-only


def _as_nobody() -> list[str]:
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("runs a command as another user: needs root and setpriv (util-linux)")
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]


def test_listing_and_showing_a_store_you_cannot_write_works_and_writes_nothing(
    finished: dict[str, str], store_path: Path, tmp_path: Path
) -> None:
    """A store of root's that others may read (0755 / 0644), listed and shown by uid 65534."""
    prefix = _as_nobody()
    shared = Path(tempfile.mkdtemp(prefix="nbtasks-shared-"))  # /tmp: others may enter it
    try:
        _list_as_nobody(prefix, finished, shutil.copytree(store_path, shared / "store"), tmp_path)
    finally:
        shutil.rmtree(shared)


def _list_as_nobody(
    prefix: list[str], finished: dict[str, str], store_path: Path, tmp_path: Path
) -> None:
    for p in [store_path.parent, store_path, *store_path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    before = _snapshot(store_path)
    names = sorted(os.listdir(store_path))
    env = {**os.environ, "HOME": str(store_path.parent)}
    cmd = [*prefix, sys.executable, "-m", "nbtasks"]
    run = {"capture_output": True, "text": True, "timeout": 60, "env": env, "cwd": "/"}
    listed = subprocess.run([*cmd, "list", "--store", str(store_path)], **run)  # type: ignore[call-overload]
    assert listed.returncode == 0, listed.stderr
    assert finished["small"] in listed.stdout and finished["large"] in listed.stdout
    shown = subprocess.run([*cmd, "show", finished["small"], "--store", str(store_path)], **run)  # type: ignore[call-overload]
    assert shown.returncode == 0, shown.stderr
    assert "SUCCESSFUL" in shown.stdout
    assert _snapshot(store_path) == before
    assert sorted(os.listdir(store_path)) == names  # not even a lock file or -shm was made
    purged = subprocess.run([*cmd, "purge", "--store", str(store_path)], **run)  # type: ignore[call-overload]
    assert purged.returncode == 2 and "another user" in purged.stderr
    assert _snapshot(store_path) == before


def test_a_read_only_app_never_writes_and_says_so_when_asked_to(
    finished: dict[str, str], store_path: Path, make_app: AppFactory
) -> None:
    before = _snapshot(store_path)
    ro = make_app(read_only=True)

    @ro.task
    def one(x: int = 1) -> int:
        return x

    assert {r.id for r in ro.results()} == set(finished.values())
    assert ro.result(finished["large"]).return_value == b"x" * 200_000
    for call in (one.delay, lambda: one.map([1]), ro.purge, ro.store.vacuum):
        with pytest.raises(nbtasks.StoreError, match="read-only"):
            call()
    with pytest.raises(nbtasks.StoreError, match="read-only"):
        ro.store.request_cancel(finished["small"])
    assert _snapshot(store_path) == before


def test_a_read_only_listing_shows_the_tasks_of_dead_owners_as_interrupted(
    store_path: Path,
) -> None:
    """Nothing is swept (written), but what a sweep would say is what a reader sees."""
    tid = ready_task_of_a_dead_process(store_path)
    listed = _nbtasks("list", "--json", "--store", str(store_path))
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["status"] == "INTERRUPTED"
    con = sqlite3.connect(store_path / "cache.db")
    (tag,) = con.execute("SELECT tag FROM Cache WHERE key = ?", ("t:" + tid,)).fetchone()
    con.close()
    assert tag == "READY"  # the reader wrote nothing


# --------------------------------------------------------------------------- 8. inputs


def test_two_threads_submitting_one_task_id_at_once_one_wins(app: nbtasks.App) -> None:
    @app.task
    def one(x: int) -> int:
        return x

    def submit(x: int, tid: str, barrier: threading.Barrier, outcomes: list[Any]) -> None:
        barrier.wait(10)
        try:
            outcomes.append(one.apply_async((x,), task_id=tid).id)
        except ValueError as exc:
            outcomes.append(exc)

    for trial in range(20):
        barrier = threading.Barrier(2)
        outcomes: list[Any] = []
        threads = [
            threading.Thread(target=submit, args=(x, f"shared-{trial}", barrier, outcomes))
            for x in (1, 2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        errors = [o for o in outcomes if isinstance(o, ValueError)]
        assert len(outcomes) == 2 and len(errors) == 1, outcomes
        assert "already used" in str(errors[0])
        assert app.result(f"shared-{trial}").get(10) in (1, 2)
    assert len(app.results()) == 20


def test_lock_timeout_is_checked(store_path: Path) -> None:
    for bad in (0, -1, float("nan"), float("inf"), "10", True):
        with pytest.raises(ValueError, match="lock_timeout"):
            nbtasks.App(store=store_path, lock_timeout=bad)
    assert not store_path.exists()
