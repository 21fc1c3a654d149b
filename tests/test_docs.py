"""Every error message that docs/troubleshooting.md quotes is one the code really produces.

The page quotes each message in bold code (**`StoreError: the store … is locked …`**). For each
one, a trigger below provokes it the way a user would meet it (a real App on ``tmp_path``, a real
store file edited with plain SQLite, a real worker process where the error needs one) and
returns ``"<exception class>: <message>"``; the quote must match it, with ``…`` in the quote
standing for any text. A quoted message without a trigger fails the test: a new entry on the page
comes with its trigger, and a trigger whose message left the page fails too.

Only the public API (``nbtasks.App``, ``nbtasks.task``, ...) is used: internal modules move.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until

import nbtasks

DOC = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"

# The triggers use POSIX: owners and modes, FIFOs, flock, signals.
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the triggers use POSIX")


def quoted_messages() -> list[str]:
    """The messages the page quotes: every code span in bold, on one line."""
    return [" ".join(m.split()) for m in re.findall(r"\*\*`([^`]+)`\*\*", DOC.read_text())]


def pattern(quote: str) -> re.Pattern[str]:
    return re.compile(".*?".join(re.escape(part) for part in quote.split("…")), re.DOTALL)


class Env:
    """What a trigger gets: a fresh directory, monkeypatch, and Apps shut down afterwards."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp_path
        self.monkeypatch = monkeypatch
        self.store = tmp_path / "store"
        self._apps: list[nbtasks.App] = []

    def app(self, store: Path | None = None, **kwargs: Any) -> nbtasks.App:
        a = nbtasks.App(store=self.store if store is None else store, **kwargs)
        self._apps.append(a)
        return a

    def close(self) -> None:
        while self._apps:
            self._apps.pop().shutdown(wait=True, cancel_pending=True)

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> None:
        """Edit the store's database behind nbtasks' back, with plain SQLite."""
        con = sqlite3.connect(self.store / "cache.db", timeout=10)
        try:
            with con:
                con.execute(statement, params)
        finally:
            con.close()

    def finished_store(self, value: Any = 1) -> str:
        """A store holding one SUCCESSFUL task that returned ``value``, its App shut down."""
        app = nbtasks.App(store=self.store)
        try:
            r = app.task(name="f")(lambda: value).delay()
            r.get(timeout=30)
        finally:
            app.shutdown()
        return r.id


def raised(call: Callable[[], Any]) -> str:
    """``"<class>: <message>"`` of what ``call`` raises."""
    try:
        call()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError(f"{call} raised nothing")


def notebook(source: str) -> dict[str, Any]:
    """Functions defined as in a notebook (module ``__main__``): a worker gets them by value."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(textwrap.dedent(source), "<cell>", "exec"), namespace)
    return namespace


TRIGGERS: dict[str, Callable[[Env], str]] = {}


def trigger(*quotes: str) -> Callable[[Callable[[Env], str]], Callable[[Env], str]]:
    def register(fn: Callable[[Env], str]) -> Callable[[Env], str]:
        for quote in quotes:
            TRIGGERS[quote] = fn
        return fn

    return register


# --------------------------------------------------------------------------- a damaged store


@trigger("StoreError: the store database …/cache.db is empty (0 bytes)")
def _empty_db(env: Env) -> str:
    env.finished_store()
    for suffix in ("-wal", "-shm"):
        (env.store / f"cache.db{suffix}").unlink(missing_ok=True)
    os.truncate(env.store / "cache.db", 0)
    return raised(env.app)


@trigger("StoreError: the store …/cache.db cannot be opened: database disk image is malformed")
def _malformed_db(env: Env) -> str:
    env.finished_store()
    db = env.store / "cache.db"
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[100:page] = b"\xff" * (page - 100)  # the first page's b-tree header and cells
    db.write_bytes(data)
    return raised(env.app)


@trigger("StoreError: the store … was written by a newer nbtasks (schema …)")
def _newer_schema(env: Env) -> str:
    env.finished_store()
    env.sql("UPDATE Cache SET value = 999 WHERE key = 'nbtasks:schema'")
    return raised(env.app)


@trigger("… has a schema key that nbtasks did not write")
def _foreign_schema(env: Env) -> str:
    env.finished_store()
    env.sql("UPDATE Cache SET value = 'two' WHERE key = 'nbtasks:schema'")
    return raised(env.app)


@trigger("StoreError: the store … has a Settings row …")
def _settings_row(env: Env) -> str:
    env.finished_store()
    env.sql("INSERT INTO Settings(key, value) VALUES ('sqlite_evil', 'x')")
    return raised(env.app)


@trigger("… holds a database trigger …")
def _db_trigger(env: Env) -> str:
    env.finished_store()
    env.sql(
        "CREATE TRIGGER planted AFTER INSERT ON Cache FOR EACH ROW"
        " BEGIN UPDATE Cache SET tag = 'x' WHERE rowid = NEW.rowid; END"
    )
    return raised(env.app)


@trigger("… names a value file '/…' that is not one of its own")
def _foreign_value_file(env: Env) -> str:
    task_id = env.finished_store(b"x" * 100_000)  # large: kept in a value file of its own
    env.sql("UPDATE Cache SET filename = '/etc/hostname' WHERE filename IS NOT NULL")
    return raised(lambda: env.app().result(task_id).return_value)


@trigger("StoreError: the record t:… in the store … is damaged")
def _damaged_record(env: Env) -> str:
    task_id = env.finished_store()
    env.sql("UPDATE Cache SET value = '{not json' WHERE key = ?", (f"t:{task_id}",))
    return raised(lambda: env.app().result(task_id).worker_ids)


# --------------------------------------------------------------------------- whose store it is


@trigger("StoreError: the store … belongs to another user")
def _other_user(env: Env) -> str:
    env.finished_store()
    uid = os.getuid()
    env.monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    return raised(env.app)


@trigger("… can be written by others")
def _group_writable(env: Env) -> str:
    env.finished_store()
    env.store.chmod(0o777)
    return raised(env.app)


@trigger("StoreError: the store … was opened read-only")
def _read_only(env: Env) -> str:
    env.finished_store()
    app = env.app(read_only=True)
    return raised(app.task(name="f")(lambda: 1).delay)


# --------------------------------------------------------------------------- locks


@trigger("StoreError: the store … is locked by pid 1234: waited … s for …/.lock")
def _lock_file_held(env: Env) -> str:
    import fcntl

    env.finished_store()
    fd = os.open(env.store / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another process creating the store would
        os.pwrite(fd, b"1234".ljust(12), 0)
        return raised(lambda: env.app(lock_timeout=0.2))
    finally:
        os.close(fd)


@trigger("… the store is locked: another process holds its write lock")
def _write_lock_held(env: Env) -> str:
    app = env.app(lock_timeout=0.2)
    f = app.task(name="f")(lambda: 1)
    f.delay().get(timeout=30)
    con = sqlite3.connect(env.store / "cache.db", isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")  # a long write transaction (a VACUUM, a sqlite3 shell)
        return raised(f.delay)
    finally:
        con.close()


# --------------------------------------------------------------------------- files not its own


@trigger("StoreError: … is a symbolic link, not a regular file")
def _linked_file(env: Env) -> str:
    env.finished_store()
    (env.tmp / "elsewhere").write_text("")
    (env.store / ".lock").unlink()
    (env.store / ".lock").symlink_to(env.tmp / "elsewhere")
    return raised(env.app)


@trigger("the store … is a symbolic link to …")
def _linked_store(env: Env) -> str:
    env.finished_store()
    link = env.tmp / "link"
    link.symlink_to(env.store)
    return raised(lambda: env.app(link))


@trigger("… is a FIFO")
def _fifo(env: Env) -> str:
    env.finished_store()
    (env.store / "cache.db-wal").unlink(missing_ok=True)
    os.mkfifo(env.store / "cache.db-wal")
    return raised(env.app)


# --------------------------------------------------------------------------- the key


def _key_file(env: Env, data: bytes, mode: int = 0o600) -> Path:
    """Use the key file under ``env``'s config directory (no NBTASKS_KEY), holding ``data``."""
    env.monkeypatch.delenv("NBTASKS_KEY", raising=False)
    env.monkeypatch.setenv("XDG_CONFIG_HOME", str(env.tmp / "config"))
    path = env.tmp / "config" / "nbtasks" / "key"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _sign_something(env: Env) -> str:
    """Submit a value that must be pickled, so the key is read."""
    app = env.app()
    return raised(lambda: app.task(name="f")(lambda x: x).delay({1, 2}).get(timeout=30))


@trigger("StoreError: The nbtasks key file … has mode 0644")
def _key_mode(env: Env) -> str:
    _key_file(env, b"k" * 32, 0o644)
    return _sign_something(env)


@trigger("… holds … bytes, fewer than the 32 a key needs")
def _key_short(env: Env) -> str:
    _key_file(env, b"")
    return _sign_something(env)


@trigger("… is a symbolic link")
def _key_link(env: Env) -> str:
    path = _key_file(env, b"k" * 32)
    path.rename(path.with_name("real"))
    path.symlink_to(path.with_name("real"))
    return _sign_something(env)


@trigger("… is owned by uid …")
def _key_owner(env: Env) -> str:
    _key_file(env, b"k" * 32)
    app = env.app()  # the store is checked with the real uid, then the key file is not
    uid = os.getuid()
    env.monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    return raised(lambda: app.task(name="f")(lambda x: x).delay({1, 2}).get(timeout=30))


@trigger("NBTASKS_KEY is only … bytes long")
def _env_key_short(env: Env) -> str:
    env.monkeypatch.setenv("NBTASKS_KEY", "too short")
    return _sign_something(env)


@trigger("UntrustedValue: … is signed by another key")
def _other_key(env: Env) -> str:
    task_id = env.finished_store({1, 2})
    env.monkeypatch.setenv("NBTASKS_KEY", "another key, also at least 32 bytes long")
    return raised(lambda: env.app().result(task_id).return_value)


# --------------------------------------------------------------------------- submitting


@trigger("ValueError: task_id='…' is already used in this store; pick a new id")
def _task_id_twice(env: Env) -> str:
    f = env.app().task(name="f")(lambda: 1)
    f.apply_async(task_id="mine")
    return raised(lambda: f.apply_async(task_id="mine"))


@trigger(
    "TypeError: arguments for task add do not match add(x, y): missing a required argument: 'y'"
)
def _bad_arguments(env: Env) -> str:
    ns = notebook("def add(x, y):\n    return x + y\n")
    return raised(lambda: env.app().task(name="add")(ns["add"]).delay(1))


@trigger("ValueError: countdown=-1.0 must be >= 0 seconds")
def _negative_countdown(env: Env) -> str:
    return raised(lambda: env.app().task(name="f")(lambda: 1).apply_async(countdown=-1))


@trigger("give countdown or eta, not both")
def _countdown_and_eta(env: Env) -> str:
    f = env.app().task(name="f")(lambda: 1)
    eta = datetime.datetime.now(datetime.UTC)
    return raised(lambda: f.apply_async(countdown=1, eta=eta))


@trigger("eta=… is a naive datetime")
def _naive_eta(env: Env) -> str:
    f = env.app().task(name="f")(lambda: 1)
    return raised(lambda: f.apply_async(eta=datetime.datetime.now()))


@trigger(
    "ValueError: executor='gpu' is not an executor; "
    "use one of 'thread', 'inline', 'process', 'dask'"
)
def _unknown_executor(env: Env) -> str:
    return raised(lambda: env.app().task(name="f", executor="gpu")(lambda: 1))


@trigger(
    "TypeError: metadata: metadata['when'] = datetime.datetime(…) (datetime) cannot be stored as"
    " JSON"
)
def _metadata_not_json(env: Env) -> str:
    f = env.app().task(name="f")(lambda: 1)
    when = datetime.datetime.now(datetime.UTC)
    return raised(lambda: f.apply_async(metadata={"when": when}))


@trigger(
    "TypeError: metadata: metadata['k']['d'] is metadata['k'] itself: the value contains itself"
    " (a cycle)"
)
def _metadata_cycle(env: Env) -> str:
    f = env.app().task(name="f")(lambda: 1)
    d: dict[str, Any] = {}
    d["d"] = d
    return raised(lambda: f.apply_async(metadata={"k": d}))


@trigger("metadata['k'] is nested deeper than 100 levels")
def _metadata_deep(env: Env) -> str:
    f = env.app().task(name="f")(lambda: 1)
    deep: list[Any] = []
    for _ in range(200):
        deep = [deep]
    return raised(lambda: f.apply_async(metadata={"k": deep}))


@trigger("ValueError: task_id='\\ud800' cannot be encoded as UTF-8 (it holds a lone surrogate, …)")
def _lone_surrogate(env: Env) -> str:
    f = env.app().task(name="f")(lambda: 1)
    return raised(lambda: f.apply_async(task_id="\ud800"))


# --------------------------------------------------------------------------- inside a task


def _inside(env: Env, body: Callable[[nbtasks.Context], Any]) -> str:
    """What ``body(ctx)`` raises inside a running task."""

    def probe(ctx: nbtasks.Context) -> str:
        return raised(lambda: body(ctx))

    return str(env.app().task(name="probe")(probe).delay().get(timeout=30))


@trigger("TypeError: progress(message=0) must be a str")
def _progress_message(env: Env) -> str:
    return _inside(env, lambda ctx: ctx.progress(1, message=0))  # type: ignore[arg-type]


@trigger("progress(total='20') must be a number (int or float)")
def _progress_total(env: Env) -> str:
    return _inside(env, lambda ctx: ctx.progress(1, total="20"))  # type: ignore[arg-type]


@trigger("UnknownTaskId: update_state(task_id='…'): no task with id '…' in the store")
def _update_other(env: Env) -> str:
    return _inside(env, lambda ctx: ctx.update_state(task_id="elsewhere", state="X"))


# --------------------------------------------------------------------------- outcomes


@trigger("TaskFailed: task add[…] failed: builtins.ZeroDivisionError: division by zero")
def _failed(env: Env) -> str:
    def add(x: int, y: int) -> float:
        return x / y

    r = env.app().task(name="add")(add).delay(1, 0)
    r.wait(timeout=30)
    return raised(lambda: r.return_value)


@trigger("TaskInterrupted: task … was interrupted: its owner process pid … on … is gone")
def _owner_gone(env: Env) -> str:
    code = f"""
        import os, nbtasks
        app = nbtasks.App(store={str(env.store)!r})
        print(app.task(name="later")(lambda: 1).apply_async(countdown=3600).id, flush=True)
        os._exit(0)  # the READY record is committed; the process dies without a word
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    task_id = out.stdout.split()[-1]
    return raised(lambda: env.app().result(task_id).return_value)


@trigger("TaskCancelled: … expired")
def _expired(env: Env) -> str:
    r = env.app().task(name="f")(lambda: 1).apply_async(countdown=0.3, expires=0.1)
    r.wait(timeout=30)
    return raised(lambda: r.return_value)


# --------------------------------------------------------------------------- process tasks


@trigger(
    "TaskFailed: … failed: nbtasks.WorkerLost: the worker process … running task f[…] was killed"
    " by SIGSEGV (Segmentation fault)"
)
def _segfault(env: Env) -> str:
    ns = notebook(
        """
        import os, signal
        def f():
            os.kill(os.getpid(), signal.SIGSEGV)
        """
    )
    r = env.app(process_workers=1).task(name="f", executor="process")(ns["f"]).delay()
    r.wait(timeout=60)
    return raised(lambda: r.return_value)


@trigger(
    "TaskFailed: … failed: nbtasks.WorkerLost: the worker process … was killed by SIGKILL (Killed);"
    " it was using … (peak) when it died: the system's out-of-memory killer likely ended it"
)
def _oom_killed(env: Env) -> str:
    """The OOM killer cannot be summoned here: the worker fills 50 MB, the threshold is lowered
    below that, and the trigger sends the SIGKILL the OOM killer would."""
    from nbtasks.executors.process import usage

    ns = notebook(
        """
        import time
        def f():
            block = bytearray(b"\\x01") * 50_000_000
            time.sleep(60)
        """
    )
    app = env.app(process_workers=1)
    r = app.task(name="f", executor="process")(ns["f"]).delay()
    pool = app._runtime._executors["process"]
    [proc] = wait_until(
        lambda: [p for p in pool._procs.values() if p.jobs and (p.peak_rss or 0) >= 50_000_000],
        timeout=60,
    )
    saved = usage.OOM_SHARE
    usage.OOM_SHARE = 40_000_000 / (usage.memory_limit() or 1)  # type: ignore[misc]
    try:
        os.kill(proc.pid, signal.SIGKILL)
        r.wait(timeout=60)
    finally:
        usage.OOM_SHARE = saved  # type: ignore[misc]
    return raised(lambda: r.return_value)


@trigger("TypeError: argument 'value' of task f is a _thread.lock, which cannot be pickled")
def _unpicklable_argument(env: Env) -> str:
    ns = notebook("def f(value):\n    return 1\n")
    f = env.app(process_workers=1).task(name="f", executor="process")(ns["f"])
    return raised(lambda: f.delay(threading.Lock()))


@trigger(
    "task f cannot run in a worker process: its global 'conn' is a sqlite3.Connection, which"
    " cannot be pickled"
)
def _unpicklable_global(env: Env) -> str:
    ns = notebook("import sqlite3\nconn = sqlite3.connect(':memory:')\ndef f():\n    return conn\n")
    f = env.app(process_workers=1).task(name="f", executor="process")(ns["f"])
    try:
        return raised(f.delay)
    finally:
        ns["conn"].close()


@trigger(
    "TypeError: cannot submit task f from a worker process: its argument 0 is a _thread.lock,"
    " which cannot be pickled"
)
def _unpicklable_subtask_argument(env: Env) -> str:
    ns = notebook(
        """
        import threading
        def f(value):
            return value
        def parent():
            try:
                f_task.delay(threading.Lock())
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
        """
    )
    app = env.app(process_workers=1)
    ns["f_task"] = app.task(name="f")(ns["f"])
    parent = app.task(name="parent", executor="process")(ns["parent"])
    return str(parent.delay().get(timeout=60))


@trigger("NbtasksError: task f runs detached (detach=True), so it cannot submit other tasks")
def _detached_submit(env: Env) -> str:
    ns = notebook(
        """
        def g():
            return 1
        def f():
            try:
                g_task.delay()
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
        """
    )
    app = env.app(process_workers=1)
    ns["g_task"] = app.task(name="g")(ns["g"])
    f = app.task(name="f", executor="process", detach=True)(ns["f"])
    return str(f.delay().get(timeout=60))


@trigger("TaskFailed: … failed: nbtasks.WorkerLost: worker processes die before they start (…)")
def _workers_cannot_start(env: Env) -> str:
    broken = env.tmp / "path" / "nbtasks"
    broken.mkdir(parents=True)
    # A half-upgraded install: the package is there, the module the workers start from fails.
    (broken / "executors" / "process").mkdir(parents=True)
    for package in (broken, broken / "executors", broken / "executors" / "process"):
        (package / "__init__.py").write_text("")
    (broken / "executors" / "process" / "zygote.py").write_text(
        "raise ImportError('a broken install')\n"
    )
    env.monkeypatch.syspath_prepend(str(broken.parent))  # workers start with this sys.path
    ns = notebook("def f():\n    return 1\n")
    r = env.app(process_workers=1).task(name="f", executor="process")(ns["f"]).delay()
    r.wait(timeout=60)
    return raised(lambda: r.return_value)


# --------------------------------------------------------------------------- Dask


@trigger("ImportError: the 'dask' executor needs distributed: pip install 'nbtasks[dask]'")
def _no_distributed(env: Env) -> str:
    env.monkeypatch.setitem(sys.modules, "distributed", None)  # as if it were not installed
    f = env.app().task(name="f", executor="dask")(lambda: 1)
    return raised(f.delay)


@trigger(
    "ValueError: executor='dask' needs a Dask cluster, and no Dask client exists in this process"
)
def _no_dask_client(env: Env) -> str:
    pytest.importorskip("distributed")
    f = env.app().task(name="f", executor="dask")(lambda: 1)
    return raised(f.delay)


_CLUSTER: list[Any] = []  # one LocalCluster for the Dask triggers, closed after the module


def _dask_client() -> Any:
    """A new client of a real ``LocalCluster`` (one worker process), started on first use."""
    import logging

    distributed = pytest.importorskip("distributed")
    if not _CLUSTER:
        _CLUSTER.append(
            distributed.LocalCluster(
                n_workers=1,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # a free port: 8787 may be taken
                silence_logs=logging.CRITICAL,
            )
        )
    client = distributed.Client(_CLUSTER[0], set_as_default=False)
    client.wait_for_workers(1, timeout=30)  # a trigger may have killed it: the nanny restarts it
    return client


@pytest.fixture(scope="module", autouse=True)
def _close_cluster() -> Iterator[None]:
    yield
    while _CLUSTER:
        _CLUSTER.pop().close()


@trigger(
    "TaskFailed: … failed: nbtasks.WorkerLost: task f[…]: the Dask worker tcp://… running it was"
    " lost"
)
def _dask_worker_lost(env: Env) -> str:
    ns = notebook(
        """
        import os, time, nbtasks
        def f():
            nbtasks.current().set_metadata(pid=os.getpid())
            time.sleep(30)
        """
    )
    client = _dask_client()
    try:
        r = env.app(dask=client).task(name="f", executor="dask")(ns["f"]).delay()
        wait_until(lambda: "pid" in r.refresh().metadata, timeout=30)
        os.kill(r.metadata["pid"], signal.SIGKILL)  # the worker process dies (out of memory, say)
        r.wait(timeout=60)
        return raised(lambda: r.return_value)
    finally:
        env.close()
        client.close()


@trigger(
    "TaskInterrupted: task … was interrupted: the Dask client lost its connection to the"
    " scheduler tcp://…"
)
def _dask_scheduler_lost(env: Env) -> str:
    ns = notebook(
        "import nbtasks, time\ndef f():\n    nbtasks.current().progress(1)\n    time.sleep(30)\n"
    )
    client = _dask_client()
    try:
        f = env.app(dask=client).task(name="f", executor="dask")(ns["f"])
        r = f.delay()
        wait_until(lambda: r.refresh().progress is not None, timeout=30)
        client.loop.add_callback(client.scheduler_comm.comm.abort)  # the network drops
        r.wait(timeout=30)
        return raised(lambda: r.return_value)
    finally:
        env.close()
        client.close()


# --------------------------------------------------------------------------- the tests


def _id(quote: str) -> str:
    fn = TRIGGERS.get(quote)
    return fn.__name__.strip("_") if fn is not None else "no-trigger:" + quote[:40]


@pytest.mark.parametrize("quote", quoted_messages(), ids=_id)
def test_each_quoted_message_is_what_the_code_says(
    quote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fn = TRIGGERS.get(quote)
    assert fn is not None, (
        f"docs/troubleshooting.md quotes {quote!r}, and tests/test_docs.py has no trigger for it:"
        " add one (a function that provokes it, registered with @trigger)"
    )
    env = Env(tmp_path, monkeypatch)
    try:
        message = fn(env)
    finally:
        env.close()
    assert pattern(quote).search(" ".join(message.split())), (
        f"docs/troubleshooting.md quotes {quote!r}, but the code says:\n{message}"
    )


def test_every_trigger_is_for_a_quoted_message() -> None:
    assert set(TRIGGERS) - set(quoted_messages()) == set()
